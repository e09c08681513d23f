//! One VirtualService `http[]` route: its matches and what it does.

use super::resilience::{FaultInjection, HttpRetry, fault, retry};
use crate::duration::IstioDuration;
use crate::error::{FieldError, FieldResult};
use crate::fields::{
    authority, full_regex, header_name, header_value, percent, redirect_status, service_host,
    some_weight, status_code, uri_path,
};
use crate::load::Context;
use crate::model::{
    Action, HeaderMatch, HeaderOps, Mirror, PathMatch, PathRewrite, QueryMatch, Redirect, Rewrite,
    RouteEntry, RouteMatch, RouteRule, StringMatch, WeightedBackend,
};
use http::Method;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct HttpRoute {
    name: Option<String>,
    #[serde(default, rename = "match")]
    matches: Vec<MatchRequest>,
    #[serde(default)]
    route: Vec<RouteDestination>,
    redirect: Option<HttpRedirect>,
    direct_response: Option<DirectResponse>,
    rewrite: Option<HttpRewrite>,
    timeout: Option<IstioDuration>,
    retries: Option<HttpRetry>,
    fault: Option<FaultInjection>,
    mirror: Option<Destination>,
    mirror_percentage: Option<Percent>,
    /// Deprecated integer form of `mirrorPercentage`.
    mirror_percent: Option<u32>,
    #[serde(default)]
    mirrors: Vec<MirrorPolicy>,
    headers: Option<Headers>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MatchRequest {
    #[serde(rename = "name")]
    _name: Option<String>,
    uri: Option<StringMatchSpec>,
    method: Option<StringMatchSpec>,
    #[serde(default)]
    headers: BTreeMap<String, StringMatchSpec>,
    #[serde(default)]
    query_params: BTreeMap<String, StringMatchSpec>,
    #[serde(default)]
    without_headers: BTreeMap<String, StringMatchSpec>,
    port: Option<u16>,
}

/// Istio's `StringMatch`: one of `exact`, `prefix`, `regex` (none: presence, for headers).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StringMatchSpec {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteDestination {
    destination: Destination,
    weight: Option<u32>,
    headers: Option<Headers>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Destination {
    host: String,
    subset: Option<String>,
    port: Option<PortSelector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortSelector {
    number: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HttpRedirect {
    uri: Option<String>,
    authority: Option<String>,
    port: Option<u16>,
    scheme: Option<String>,
    redirect_code: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectResponse {
    status: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpRewrite {
    uri: Option<String>,
    authority: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Percent {
    pub value: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorPolicy {
    destination: Destination,
    percentage: Option<Percent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Headers {
    request: Option<HeaderOperations>,
    response: Option<HeaderOperations>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderOperations {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// The route's entries, one per match (one matching everything when `match` is empty).
pub(super) fn entries(
    http: &HttpRoute,
    at: &str,
    cx: &Context<'_>,
) -> FieldResult<Vec<RouteEntry>> {
    let template = Arc::new(route_rule(http, at, cx)?);
    if http.matches.is_empty() {
        let rule = specialize(&template, http, None, at)?;
        return Ok(vec![RouteEntry {
            matcher: RouteMatch::default(),
            rule,
        }]);
    }
    let mut out = Vec::new();
    for (j, m) in http.matches.iter().enumerate() {
        let match_at = format!("{at}.match[{j}]");
        let matcher = route_match(m, &match_at)?;
        let rule = specialize(&template, http, Some(&matcher), at)?;
        out.push(RouteEntry { matcher, rule });
    }
    Ok(out)
}

/// Istio's `rewrite.uri` replaces the matched prefix of a `prefix` match (with no `uri`
/// match, Envoy's implicit prefix `/`), and the whole path of an `exact` match.
fn specialize(
    template: &Arc<RouteRule>,
    http: &HttpRoute,
    matcher: Option<&RouteMatch>,
    at: &str,
) -> FieldResult<Arc<RouteRule>> {
    let Some(uri) = http.rewrite.as_ref().and_then(|r| r.uri.as_ref()) else {
        return Ok(template.clone());
    };
    let path = match matcher.and_then(|m| m.path.as_ref()) {
        None => PathRewrite::Literal {
            matched: "/".into(),
            replacement: uri.clone(),
        },
        Some(PathMatch::Prefix(p) | PathMatch::SegmentPrefix(p)) => PathRewrite::Literal {
            matched: p.clone(),
            replacement: uri.clone(),
        },
        Some(PathMatch::Exact(_)) => PathRewrite::Full(uri.clone()),
        Some(PathMatch::Regex(_)) => {
            return Err(FieldError::unsupported(
                format!("{at}.rewrite.uri"),
                "`rewrite.uri` with a `regex` uri match",
            ));
        }
    };
    let mut rule = RouteRule::clone(template);
    if let Some(rewrite) = &mut rule.rewrite {
        rewrite.path = Some(path);
    }
    Ok(Arc::new(rule))
}

fn route_rule(http: &HttpRoute, at: &str, cx: &Context<'_>) -> FieldResult<RouteRule> {
    let actions = [
        !http.route.is_empty(),
        http.redirect.is_some(),
        http.direct_response.is_some(),
    ];
    if actions.iter().filter(|&&a| a).count() != 1 {
        return Err(FieldError::new(
            at,
            "expected exactly one of `route`, `redirect` and `directResponse`",
        ));
    }
    let (mut request_headers, mut response_headers) =
        headers(http.headers.as_ref(), &format!("{at}.headers"))?;
    let action = if let Some(r) = &http.redirect {
        Action::Redirect(redirect(r, &format!("{at}.redirect"))?)
    } else if let Some(d) = &http.direct_response {
        Action::DirectResponse {
            status: status_code(d.status, &format!("{at}.directResponse.status"))?,
        }
    } else {
        let (backends, extra) = destinations(&http.route, at, cx)?;
        if let Some((request, response)) = extra {
            append(&mut request_headers, request);
            append(&mut response_headers, response);
        }
        Action::Forward(backends)
    };
    let rewrite = match &http.rewrite {
        Some(r) => {
            if let Some(uri) = &r.uri {
                uri_path(uri, &format!("{at}.rewrite.uri"))?;
            }
            Some(Rewrite {
                hostname: authority(&r.authority, &format!("{at}.rewrite.authority"))?,
                path: None, // Set per match by `specialize`.
            })
        }
        None => None,
    };
    let name = match &http.name {
        Some(name) => format!(
            "VirtualService {} {} ({name})",
            cx.object,
            at.trim_start_matches("spec.")
        ),
        None => format!(
            "VirtualService {} {}",
            cx.object,
            at.trim_start_matches("spec.")
        ),
    };
    Ok(RouteRule {
        name,
        action,
        request_headers,
        response_headers,
        rewrite,
        mirrors: mirrors(http, at, cx)?,
        fault: http
            .fault
            .as_ref()
            .map(|f| fault(f, &format!("{at}.fault")))
            .transpose()?,
        timeout: http.timeout.and_then(IstioDuration::nonzero),
        retry: http
            .retries
            .as_ref()
            .map(|r| retry(r, &format!("{at}.retries")))
            .transpose()?,
    })
}

type HeaderPair = (HeaderOps, HeaderOps);

/// The weighted backends, and the one destination's `headers` when there is one destination.
fn destinations(
    route: &[RouteDestination],
    at: &str,
    cx: &Context<'_>,
) -> FieldResult<(Vec<WeightedBackend>, Option<HeaderPair>)> {
    let mut backends = Vec::new();
    for (k, r) in route.iter().enumerate() {
        let d_at = format!("{at}.route[{k}]");
        if route.len() > 1 && r.headers.is_some() {
            return Err(FieldError::unsupported(
                format!("{d_at}.headers"),
                "per-destination `headers` on a route with several destinations",
            ));
        }
        let d = &r.destination;
        backends.push(WeightedBackend {
            service: service_host(
                &d.host,
                &cx.object.namespace,
                &format!("{d_at}.destination.host"),
            )?,
            port: d.port.as_ref().map(|p| p.number),
            subset: d.subset.clone(),
            // A lone destination without a weight takes all the traffic.
            weight: r.weight.unwrap_or(if route.len() == 1 { 100 } else { 0 }),
            unresolved: http::StatusCode::SERVICE_UNAVAILABLE,
            refused: None,
        });
    }
    some_weight(&backends, format!("{at}.route"))?;
    let extra = match route {
        [only] => Some(headers(
            only.headers.as_ref(),
            &format!("{at}.route[0].headers"),
        )?),
        _ => None,
    };
    Ok((backends, extra))
}

fn append(to: &mut HeaderOps, from: HeaderOps) {
    to.set.extend(from.set);
    to.add.extend(from.add);
    to.remove.extend(from.remove);
}

fn headers(h: Option<&Headers>, at: &str) -> FieldResult<HeaderPair> {
    let Some(h) = h else {
        return Ok(Default::default());
    };
    let ops = |o: Option<&HeaderOperations>, at: String| -> FieldResult<HeaderOps> {
        let Some(o) = o else {
            return Ok(HeaderOps::default());
        };
        let pairs = |map: &BTreeMap<String, String>, what: &str| -> FieldResult<Vec<_>> {
            map.iter()
                .map(|(name, value)| {
                    let field = format!("{at}.{what}.{name}");
                    Ok((header_name(name, &field)?, header_value(value, &field)?))
                })
                .collect()
        };
        Ok(HeaderOps {
            set: pairs(&o.set, "set")?,
            add: pairs(&o.add, "add")?,
            remove: o
                .remove
                .iter()
                .enumerate()
                .map(|(k, name)| header_name(name, &format!("{at}.remove[{k}]")))
                .collect::<FieldResult<_>>()?,
        })
    };
    Ok((
        ops(h.request.as_ref(), format!("{at}.request"))?,
        ops(h.response.as_ref(), format!("{at}.response"))?,
    ))
}

fn redirect(r: &HttpRedirect, at: &str) -> FieldResult<Redirect> {
    let status = redirect_status(r.redirect_code.unwrap_or(301), format!("{at}.redirectCode"))?;
    if let Some(scheme) = &r.scheme
        && scheme != "http"
        && scheme != "https"
    {
        return Err(FieldError::new(
            format!("{at}.scheme"),
            format!("`{scheme}`: expected `http` or `https`"),
        ));
    }
    let path = match &r.uri {
        Some(uri) => Some(PathRewrite::Full(uri_path(uri, &format!("{at}.uri"))?)),
        None => None,
    };
    Ok(Redirect {
        scheme: r.scheme.clone(),
        hostname: authority(&r.authority, &format!("{at}.authority"))?,
        path,
        port: r.port,
        status,
    })
}

fn mirrors(http: &HttpRoute, at: &str, cx: &Context<'_>) -> FieldResult<Vec<Mirror>> {
    let mut out = Vec::new();
    let one = |d: &Destination, p: Option<f64>, d_at: &str, p_at: &str| -> FieldResult<Mirror> {
        if d.subset.is_some() {
            return Err(FieldError::unsupported(
                format!("{d_at}.subset"),
                "a mirror subset",
            ));
        }
        Ok(Mirror {
            service: service_host(&d.host, &cx.object.namespace, &format!("{d_at}.host"))?,
            port: d.port.as_ref().map(|p| p.number),
            percent: percent(p.unwrap_or(100.0), p_at)?,
        })
    };
    if let Some(d) = &http.mirror {
        let p = match (&http.mirror_percentage, http.mirror_percent) {
            (Some(p), _) => Some(p.value),
            (None, Some(p)) => Some(f64::from(p)),
            (None, None) => None,
        };
        out.push(one(
            d,
            p,
            &format!("{at}.mirror"),
            &format!("{at}.mirrorPercentage.value"),
        )?);
    }
    for (k, m) in http.mirrors.iter().enumerate() {
        let m_at = format!("{at}.mirrors[{k}]");
        let p = m.percentage.as_ref().map(|p| p.value);
        out.push(one(
            &m.destination,
            p,
            &format!("{m_at}.destination"),
            &format!("{m_at}.percentage.value"),
        )?);
    }
    Ok(out)
}

fn route_match(m: &MatchRequest, at: &str) -> FieldResult<RouteMatch> {
    let path = match &m.uri {
        None => None,
        Some(uri) => Some(match string_match(uri, &format!("{at}.uri"), false)? {
            StringMatch::Exact(p) => PathMatch::Exact(p),
            StringMatch::Prefix(p) => PathMatch::Prefix(p),
            StringMatch::Regex(r) => PathMatch::Regex(r),
            StringMatch::Present => {
                return Err(FieldError::new(
                    format!("{at}.uri"),
                    "expected one of `exact`, `prefix` or `regex`",
                ));
            }
        }),
    };
    let method = match &m.method {
        None => None,
        Some(spec) => {
            let field = format!("{at}.method");
            match (&spec.exact, &spec.prefix, &spec.regex) {
                (Some(exact), None, None) => {
                    Some(Method::from_bytes(exact.as_bytes()).map_err(|_| {
                        FieldError::new(&field, format!("`{exact}` is not a method"))
                    })?)
                }
                _ => {
                    return Err(FieldError::unsupported(
                        field,
                        "a method match other than `exact`",
                    ));
                }
            }
        }
    };
    let mut headers = Vec::new();
    for (map, invert, what) in [
        (&m.headers, false, "headers"),
        (&m.without_headers, true, "withoutHeaders"),
    ] {
        for (name, spec) in map {
            let field = format!("{at}.{what}.{name}");
            headers.push(HeaderMatch {
                name: header_name(name, &field)?,
                value: string_match(spec, &field, true)?,
                invert,
            });
        }
    }
    let query = m
        .query_params
        .iter()
        .map(|(name, spec)| {
            Ok(QueryMatch {
                name: name.clone(),
                value: string_match(spec, &format!("{at}.queryParams.{name}"), true)?,
            })
        })
        .collect::<FieldResult<_>>()?;
    Ok(RouteMatch {
        path,
        headers,
        query,
        method,
        port: m.port,
    })
}

fn string_match(spec: &StringMatchSpec, field: &str, presence: bool) -> FieldResult<StringMatch> {
    match (&spec.exact, &spec.prefix, &spec.regex) {
        (Some(e), None, None) => Ok(StringMatch::Exact(e.clone())),
        (None, Some(p), None) => Ok(StringMatch::Prefix(p.clone())),
        (None, None, Some(r)) => Ok(StringMatch::Regex(full_regex(
            r,
            &format!("{field}.regex"),
        )?)),
        (None, None, None) if presence => Ok(StringMatch::Present),
        _ => Err(FieldError::new(
            field,
            "expected exactly one of `exact`, `prefix` or `regex`",
        )),
    }
}
