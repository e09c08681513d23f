//! Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`, `v1beta1`), as GAMMA attaches it
//! to a Service or to the waypoint Gateway.
//!
//! Accepted and ignored: `hostnames` on Service parents (GAMMA ignores them), `sectionName`
//! on the waypoint Gateway (it has one listener), rule `name`. A `backendRef` or mirror in
//! another namespace needs a ReferenceGrant there (see `referencegrant`).
//! Refused: `hostnames` with the waypoint Gateway as parent, `sectionName` on a Service
//! parent (port names are not known here: use `port`), backend `filters`, `sessionPersistence`,
//! the `ExtensionRef` and `CORS` filters, and every field not listed in the types below.

mod filters;

use crate::build::{Attachment, Parent, RouteSet, Translated};
use crate::duration::GatewayDuration;
use crate::error::{FieldError, FieldResult};
use crate::fields::{GATEWAY_GROUP, Reference, full_regex, header_name, reference, some_weight};
use crate::load::Context;
use crate::model::{
    Action, HeaderMatch, ObjectRef, PathMatch, PathRewrite, QueryMatch, RetryOn, RetryPolicy,
    RouteEntry, RouteMatch, RouteRule, StringMatch, WeightedBackend,
};
use filters::{Filter, FilterSet};
use http::Method;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Spec {
    #[serde(default)]
    parent_refs: Vec<ParentRef>,
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ParentRef {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    port: Option<u16>,
    section_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Rule {
    #[serde(rename = "name")]
    _name: Option<String>,
    #[serde(default)]
    matches: Vec<Match>,
    #[serde(default)]
    filters: Vec<Filter>,
    #[serde(default)]
    backend_refs: Vec<BackendRef>,
    timeouts: Option<Timeouts>,
    retry: Option<Retry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Match {
    path: Option<PathSpec>,
    #[serde(default)]
    headers: Vec<NameMatch>,
    #[serde(default)]
    query_params: Vec<NameMatch>,
    method: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathSpec {
    #[serde(rename = "type", default)]
    kind: PathType,
    value: Option<String>,
}

#[derive(Clone, Copy, Default, Deserialize, PartialEq, Eq)]
enum PathType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameMatch {
    #[serde(rename = "type", default)]
    kind: ValueType,
    name: String,
    value: String,
}

#[derive(Clone, Copy, Default, Deserialize)]
enum ValueType {
    #[default]
    Exact,
    RegularExpression,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BackendRef {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<u16>,
    weight: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Timeouts {
    request: Option<GatewayDuration>,
    backend_request: Option<GatewayDuration>,
}

/// The experimental `retry` (GEP-1731).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Retry {
    #[serde(default)]
    codes: Vec<u16>,
    attempts: Option<u32>,
    backoff: Option<GatewayDuration>,
}

/// Retries when `retry` does not give `attempts`: Istio's default.
const DEFAULT_ATTEMPTS: u32 = 2;

pub(crate) fn translate(spec: Spec, cx: &Context<'_>) -> FieldResult<Option<Translated>> {
    let parents = parents(&spec.parent_refs, cx)?;
    if parents.is_empty() {
        tracing::debug!(route = %cx.object, "HTTPRoute skipped: no parent is a Service or this waypoint");
        return Ok(None);
    }
    if !spec.hostnames.is_empty() && parents.iter().any(|a| a.parent == Parent::Waypoint) {
        return Err(FieldError::unsupported(
            "spec.hostnames",
            "`hostnames` on a route attached to the waypoint Gateway",
        ));
    }
    let mut entries = Vec::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        entries.extend(rule_entries(rule, i, cx)?);
    }
    Ok(Some(Translated::HttpRoute(RouteSet {
        parents,
        entries,
        created: cx.metadata.creation_timestamp.clone(),
    })))
}

fn parents(refs: &[ParentRef], cx: &Context<'_>) -> FieldResult<Vec<Attachment>> {
    let mut out = Vec::new();
    for (i, parent) in refs.iter().enumerate() {
        let at = format!("spec.parentRefs[{i}]");
        let namespace = parent.namespace.as_deref().unwrap_or(&cx.object.namespace);
        let object = ObjectRef::new(namespace, &parent.name);
        let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = parent.kind.as_deref().unwrap_or("Gateway");
        let attachment = match reference(group, kind, &object, cx, &at, "parent")? {
            Reference::Service => {
                if parent.section_name.is_some() {
                    return Err(FieldError::unsupported(
                        format!("{at}.sectionName"),
                        "`sectionName` on a Service parent (use `port`)",
                    ));
                }
                Attachment {
                    parent: Parent::Service(object),
                    port: parent.port,
                }
            }
            Reference::ThisWaypoint => Attachment {
                parent: Parent::Waypoint,
                port: parent.port,
            },
            Reference::OtherGateway => continue,
        };
        if !out.contains(&attachment) {
            out.push(attachment);
        }
    }
    Ok(out)
}

/// One entry per match (a rule without matches has one: PathPrefix `/`).
fn rule_entries(rule: &Rule, i: usize, cx: &Context<'_>) -> FieldResult<Vec<RouteEntry>> {
    let at = format!("spec.rules[{i}]");
    let filters = filters::translate(&rule.filters, &at, cx)?;
    let template = Arc::new(route_rule(rule, &at, filters.clone(), cx)?);
    let default_match = [None];
    let matches: Vec<Option<&Match>> = if rule.matches.is_empty() {
        default_match.to_vec()
    } else {
        rule.matches.iter().map(Some).collect()
    };
    let mut entries = Vec::new();
    for (j, m) in matches.into_iter().enumerate() {
        let match_at = format!("{at}.matches[{j}]");
        let matcher = match m {
            Some(m) => route_match(m, &match_at)?,
            None => RouteMatch {
                path: Some(PathMatch::SegmentPrefix("/".into())),
                ..RouteMatch::default()
            },
        };
        let rule = match &filters.prefix_rewrite_at {
            None => template.clone(),
            Some(filter_at) => {
                let Some(PathMatch::SegmentPrefix(prefix)) = &matcher.path else {
                    return Err(FieldError::new(
                        filter_at.clone(),
                        format!(
                            "ReplacePrefixMatch needs every match of the rule to be a PathPrefix \
                             match, and {match_at}.path is not"
                        ),
                    ));
                };
                Arc::new(with_matched_prefix(&template, prefix))
            }
        };
        entries.push(RouteEntry { matcher, rule });
    }
    Ok(entries)
}

/// A copy of `rule` whose prefix rewrites replace `prefix`.
fn with_matched_prefix(rule: &RouteRule, prefix: &str) -> RouteRule {
    let mut rule = rule.clone();
    let paths = [
        rule.rewrite.as_mut().and_then(|r| r.path.as_mut()),
        match &mut rule.action {
            Action::Redirect(r) => r.path.as_mut(),
            _ => None,
        },
    ];
    for path in paths.into_iter().flatten() {
        if let PathRewrite::Prefix { matched, .. } = path {
            *matched = prefix.to_owned();
        }
    }
    rule
}

fn route_rule(
    rule: &Rule,
    at: &str,
    filters: FilterSet,
    cx: &Context<'_>,
) -> FieldResult<RouteRule> {
    let action = match filters.redirect {
        Some(redirect) => {
            if !rule.backend_refs.is_empty() {
                return Err(FieldError::new(
                    format!("{at}.backendRefs"),
                    "a rule with a RequestRedirect filter must not have backendRefs",
                ));
            }
            Action::Redirect(redirect)
        }
        None if rule.backend_refs.is_empty() => Action::DirectResponse { status: 500 },
        None => Action::Forward(backends(&rule.backend_refs, at, cx)?),
    };
    let timeouts = rule.timeouts.as_ref();
    let per_try_timeout = timeouts
        .and_then(|t| t.backend_request)
        .and_then(GatewayDuration::nonzero);
    let timeout = timeouts
        .and_then(|t| t.request)
        .and_then(GatewayDuration::nonzero);
    if let (Some(request), Some(backend)) = (timeout, per_try_timeout)
        && backend > request
    {
        return Err(FieldError::new(
            format!("{at}.timeouts.backendRequest"),
            format!("{backend:?} is longer than timeouts.request ({request:?})"),
        ));
    }
    // As Istio translates it: with a `retry`, `backendRequest` bounds each attempt; without
    // one it is the route's timeout (in place of `request`), over Istio's default retries.
    let (retry, timeout) = match &rule.retry {
        Some(retry) => (
            Some(retry_policy(
                retry,
                &format!("{at}.retry"),
                per_try_timeout,
            )?),
            timeout,
        ),
        None => (None, per_try_timeout.or(timeout)),
    };
    Ok(RouteRule {
        name: format!("HTTPRoute {} {}", cx.object, at.trim_start_matches("spec.")),
        action,
        request_headers: filters.request_headers,
        response_headers: filters.response_headers,
        rewrite: filters.rewrite,
        mirrors: filters.mirrors,
        fault: None,
        timeout,
        retry,
    })
}

fn backends(refs: &[BackendRef], at: &str, cx: &Context<'_>) -> FieldResult<Vec<WeightedBackend>> {
    let mut out = Vec::new();
    for (k, b) in refs.iter().enumerate() {
        let service = service_ref(
            b.group.as_deref(),
            b.kind.as_deref(),
            b.namespace.as_deref(),
            &b.name,
            &format!("{at}.backendRefs[{k}]"),
            cx,
        )?;
        out.push(WeightedBackend {
            service,
            port: b.port,
            subset: None,
            weight: b.weight.unwrap_or(1),
            unresolved: http::StatusCode::INTERNAL_SERVER_ERROR,
            refused: None,
        });
    }
    some_weight(&out, format!("{at}.backendRefs"))?;
    Ok(out)
}

/// A `backendRef` (or mirror `backendRef`) as a Service.
fn service_ref(
    group: Option<&str>,
    kind: Option<&str>,
    namespace: Option<&str>,
    name: &str,
    at: &str,
    cx: &Context<'_>,
) -> FieldResult<ObjectRef> {
    match (group.unwrap_or(""), kind.unwrap_or("Service")) {
        ("" | "core", "Service") => Ok(ObjectRef::new(
            namespace.unwrap_or(&cx.object.namespace),
            name,
        )),
        (group, kind) => Err(FieldError::new(
            format!("{at}.kind"),
            format!("backend `{kind}` of group `{group}` is not supported: expected a Service"),
        )),
    }
}

fn retry_policy(
    retry: &Retry,
    at: &str,
    per_try_timeout: Option<std::time::Duration>,
) -> FieldResult<RetryPolicy> {
    for (k, code) in retry.codes.iter().enumerate() {
        if !(400..=599).contains(code) {
            return Err(FieldError::new(
                format!("{at}.codes[{k}]"),
                format!("{code} is not a retriable status: expected 400 to 599"),
            ));
        }
    }
    let base = retry
        .backoff
        .and_then(GatewayDuration::nonzero)
        .unwrap_or(RetryPolicy::DEFAULT_BACKOFF_BASE);
    let attempts = retry.attempts.unwrap_or(DEFAULT_ATTEMPTS);
    Ok(RetryPolicy {
        attempts,
        // No retries, no retry policy at all in Istio: the per-try timeout goes with it.
        per_try_timeout: per_try_timeout.filter(|_| attempts > 0),
        // Istio also retries connection failures and refused streams for HTTPRoutes.
        on: RetryOn {
            connect_failure: true,
            refused_stream: true,
            status_codes: retry.codes.clone(),
            ..RetryOn::default()
        },
        backoff_base: base,
        backoff_max: base * 10,
    })
}

fn route_match(m: &Match, at: &str) -> FieldResult<RouteMatch> {
    let path = match &m.path {
        None => PathMatch::SegmentPrefix("/".into()),
        Some(p) => {
            let value = p.value.as_deref().unwrap_or("/");
            let field = format!("{at}.path.value");
            if p.kind != PathType::RegularExpression && !value.starts_with('/') {
                return Err(FieldError::new(
                    field,
                    format!("`{value}` must start with `/`"),
                ));
            }
            match p.kind {
                PathType::Exact => PathMatch::Exact(value.to_owned()),
                PathType::PathPrefix => PathMatch::SegmentPrefix(value.to_owned()),
                PathType::RegularExpression => PathMatch::Regex(full_regex(value, &field)?),
            }
        }
    };
    let mut headers: Vec<HeaderMatch> = Vec::new();
    for (k, h) in m.headers.iter().enumerate() {
        let name = header_name(&h.name, &format!("{at}.headers[{k}].name"))?;
        let value = value_match(h, &format!("{at}.headers[{k}].value"))?;
        // Gateway API: only the first of equivalent names counts.
        if !headers.iter().any(|e| e.name == name) {
            headers.push(HeaderMatch {
                name,
                value,
                invert: false,
            });
        }
    }
    let mut query: Vec<QueryMatch> = Vec::new();
    for (k, q) in m.query_params.iter().enumerate() {
        let value = value_match(q, &format!("{at}.queryParams[{k}].value"))?;
        if !query.iter().any(|e| e.name == q.name) {
            query.push(QueryMatch {
                name: q.name.clone(),
                value,
            });
        }
    }
    let method = match &m.method {
        None => None,
        Some(method) => Some(gateway_method(method, &format!("{at}.method"))?),
    };
    Ok(RouteMatch {
        path: Some(path),
        headers,
        query,
        method,
        port: None,
    })
}

fn value_match(m: &NameMatch, field: &str) -> FieldResult<StringMatch> {
    Ok(match m.kind {
        ValueType::Exact => StringMatch::Exact(m.value.clone()),
        ValueType::RegularExpression => StringMatch::Regex(full_regex(&m.value, field)?),
    })
}

/// Gateway API's `HTTPMethod` enumeration.
fn gateway_method(method: &str, field: &str) -> FieldResult<Method> {
    const METHODS: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if !METHODS.contains(&method) {
        return Err(FieldError::new(
            field,
            format!(
                "`{method}` is not a method: expected one of {}",
                METHODS.join(", ")
            ),
        ));
    }
    Method::from_bytes(method.as_bytes())
        .map_err(|_| FieldError::new(field, format!("`{method}` is not a method")))
}
