//! HTTPRoute `rules[].filters[]`: header modifiers, redirect, rewrite and mirrors.

use super::service_ref;
use crate::error::{FieldError, FieldResult};
use crate::fields::{authority, header_name, header_value, redirect_status, uri_path};
use crate::load::Context;
use crate::model::{HeaderOps, Mirror, PathRewrite, Redirect, Rewrite};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Filter {
    #[serde(rename = "type")]
    kind: FilterType,
    request_header_modifier: Option<HeaderModifier>,
    response_header_modifier: Option<HeaderModifier>,
    request_redirect: Option<RequestRedirect>,
    #[serde(rename = "urlRewrite")]
    url_rewrite: Option<UrlRewrite>,
    request_mirror: Option<RequestMirror>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
enum FilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
    RequestRedirect,
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    RequestMirror,
    /// Known, refused with a clear message.
    ExtensionRef,
    #[serde(rename = "CORS")]
    Cors,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderModifier {
    #[serde(default)]
    set: Vec<Header>,
    #[serde(default)]
    add: Vec<Header>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RequestRedirect {
    scheme: Option<Scheme>,
    hostname: Option<String>,
    path: Option<PathModifier>,
    port: Option<u16>,
    status_code: Option<u16>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Scheme {
    Http,
    Https,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UrlRewrite {
    hostname: Option<String>,
    path: Option<PathModifier>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PathModifier {
    #[serde(rename = "type")]
    kind: PathModifierType,
    replace_full_path: Option<String>,
    replace_prefix_match: Option<String>,
}

#[derive(Clone, Copy, Deserialize)]
enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RequestMirror {
    backend_ref: MirrorBackend,
    percent: Option<u32>,
    fraction: Option<Fraction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorBackend {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fraction {
    numerator: u32,
    denominator: Option<u32>,
}

/// What a rule's filters add up to.
#[derive(Clone, Default)]
pub(super) struct FilterSet {
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub mirrors: Vec<Mirror>,
    /// The field of a `ReplacePrefixMatch`, whose matched prefix each match fills in.
    pub prefix_rewrite_at: Option<String>,
}

pub(super) fn translate(
    filters: &[Filter],
    rule_at: &str,
    cx: &Context<'_>,
) -> FieldResult<FilterSet> {
    let mut set = FilterSet::default();
    let mut seen: Vec<FilterType> = Vec::new();
    for (k, filter) in filters.iter().enumerate() {
        let at = format!("{rule_at}.filters[{k}]");
        if filter.kind != FilterType::RequestMirror && seen.contains(&filter.kind) {
            return Err(FieldError::new(
                format!("{at}.type"),
                format!("{:?} appears twice in one rule", filter.kind),
            ));
        }
        seen.push(filter.kind);
        check_config_fields(filter, &at)?;
        match filter.kind {
            FilterType::RequestHeaderModifier => {
                let m = required(
                    &filter.request_header_modifier,
                    &at,
                    "requestHeaderModifier",
                )?;
                set.request_headers = header_ops(m, &format!("{at}.requestHeaderModifier"))?;
            }
            FilterType::ResponseHeaderModifier => {
                let m = required(
                    &filter.response_header_modifier,
                    &at,
                    "responseHeaderModifier",
                )?;
                set.response_headers = header_ops(m, &format!("{at}.responseHeaderModifier"))?;
            }
            FilterType::RequestRedirect => {
                let r = required(&filter.request_redirect, &at, "requestRedirect")?;
                let r_at = format!("{at}.requestRedirect");
                let path = path_modifier(r.path.as_ref(), &r_at, &mut set.prefix_rewrite_at)?;
                let status = r.status_code.map_or(302, u32::from);
                let status = redirect_status(status, format!("{r_at}.statusCode"))?;
                set.redirect = Some(Redirect {
                    scheme: r.scheme.map(|s| match s {
                        Scheme::Http => "http".to_owned(),
                        Scheme::Https => "https".to_owned(),
                    }),
                    hostname: authority(&r.hostname, &format!("{r_at}.hostname"))?,
                    path,
                    port: r.port,
                    status,
                });
            }
            FilterType::UrlRewrite => {
                let r = required(&filter.url_rewrite, &at, "urlRewrite")?;
                let r_at = format!("{at}.urlRewrite");
                set.rewrite = Some(Rewrite {
                    hostname: authority(&r.hostname, &format!("{r_at}.hostname"))?,
                    path: path_modifier(r.path.as_ref(), &r_at, &mut set.prefix_rewrite_at)?,
                });
            }
            FilterType::RequestMirror => {
                let m = required(&filter.request_mirror, &at, "requestMirror")?;
                set.mirrors
                    .push(mirror(m, &format!("{at}.requestMirror"), cx)?);
            }
            FilterType::ExtensionRef | FilterType::Cors => {
                return Err(FieldError::unsupported(
                    format!("{at}.type"),
                    &format!("the {:?} filter", filter.kind),
                ));
            }
        }
    }
    if set.redirect.is_some() && set.rewrite.is_some() {
        return Err(FieldError::new(
            format!("{rule_at}.filters"),
            "RequestRedirect and URLRewrite cannot be used together",
        ));
    }
    Ok(set)
}

/// Gateway API: the configuration field must be the one the `type` names, and only it.
fn check_config_fields(filter: &Filter, at: &str) -> FieldResult<()> {
    let present = [
        (
            filter.request_header_modifier.is_some(),
            FilterType::RequestHeaderModifier,
            "requestHeaderModifier",
        ),
        (
            filter.response_header_modifier.is_some(),
            FilterType::ResponseHeaderModifier,
            "responseHeaderModifier",
        ),
        (
            filter.request_redirect.is_some(),
            FilterType::RequestRedirect,
            "requestRedirect",
        ),
        (
            filter.url_rewrite.is_some(),
            FilterType::UrlRewrite,
            "urlRewrite",
        ),
        (
            filter.request_mirror.is_some(),
            FilterType::RequestMirror,
            "requestMirror",
        ),
    ];
    for (is_set, kind, field) in present {
        if is_set && kind != filter.kind {
            return Err(FieldError::new(
                format!("{at}.{field}"),
                format!(
                    "`{field}` does not belong to a filter of type {:?}",
                    filter.kind
                ),
            ));
        }
    }
    Ok(())
}

fn required<'a, T>(value: &'a Option<T>, at: &str, field: &str) -> FieldResult<&'a T> {
    value.as_ref().ok_or_else(|| {
        FieldError::new(
            format!("{at}.{field}"),
            format!("missing: the filter's type needs `{field}`"),
        )
    })
}

fn header_ops(m: &HeaderModifier, at: &str) -> FieldResult<HeaderOps> {
    let pairs = |list: &[Header], what: &str| -> FieldResult<Vec<_>> {
        list.iter()
            .enumerate()
            .map(|(k, h)| {
                Ok((
                    header_name(&h.name, &format!("{at}.{what}[{k}].name"))?,
                    header_value(&h.value, &format!("{at}.{what}[{k}].value"))?,
                ))
            })
            .collect()
    };
    let remove = m
        .remove
        .iter()
        .enumerate()
        .map(|(k, name)| header_name(name, &format!("{at}.remove[{k}]")))
        .collect::<FieldResult<_>>()?;
    Ok(HeaderOps {
        set: pairs(&m.set, "set")?,
        add: pairs(&m.add, "add")?,
        remove,
    })
}

/// A path modifier; a `ReplacePrefixMatch` gets its matched prefix later, per match.
fn path_modifier(
    path: Option<&PathModifier>,
    at: &str,
    prefix_at: &mut Option<String>,
) -> FieldResult<Option<PathRewrite>> {
    let Some(p) = path else { return Ok(None) };
    let at = format!("{at}.path");
    let (value, field) = match p.kind {
        PathModifierType::ReplaceFullPath => (&p.replace_full_path, "replaceFullPath"),
        PathModifierType::ReplacePrefixMatch => (&p.replace_prefix_match, "replacePrefixMatch"),
    };
    let Some(value) = value else {
        return Err(FieldError::new(
            format!("{at}.{field}"),
            format!("missing: the path type needs `{field}`"),
        ));
    };
    if !value.starts_with('/') {
        return Err(FieldError::new(
            format!("{at}.{field}"),
            format!("`{value}` must start with `/`"),
        ));
    }
    uri_path(value, &format!("{at}.{field}"))?;
    Ok(Some(match p.kind {
        PathModifierType::ReplaceFullPath => PathRewrite::Full(value.clone()),
        PathModifierType::ReplacePrefixMatch => {
            *prefix_at = Some(format!("{at}.type"));
            PathRewrite::Prefix {
                matched: String::new(),
                replacement: value.clone(),
            }
        }
    }))
}

fn mirror(m: &RequestMirror, at: &str, cx: &Context<'_>) -> FieldResult<Mirror> {
    let b = &m.backend_ref;
    let service = service_ref(
        b.group.as_deref(),
        b.kind.as_deref(),
        b.namespace.as_deref(),
        &b.name,
        &format!("{at}.backendRef"),
        cx,
    )?;
    let percent = match (m.percent, &m.fraction) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                at,
                "give `percent` or `fraction`, not both",
            ));
        }
        (Some(p), None) if p <= 100 => f64::from(p),
        (Some(p), None) => {
            return Err(FieldError::new(
                format!("{at}.percent"),
                format!("{p} is not between 0 and 100"),
            ));
        }
        (None, Some(f)) => {
            let denominator = f.denominator.unwrap_or(100);
            if denominator == 0 || f.numerator > denominator {
                return Err(FieldError::new(
                    format!("{at}.fraction"),
                    format!(
                        "{}/{denominator} is not a fraction between 0 and 1",
                        f.numerator
                    ),
                ));
            }
            100.0 * f64::from(f.numerator) / f64::from(denominator)
        }
        (None, None) => 100.0,
    };
    Ok(Mirror {
        service,
        port: b.port,
        percent,
    })
}
