//! Pieces shared by the translators: object metadata, references to a Service or a Gateway,
//! redirect statuses, weights, service host names, header names and values, regular
//! expressions.

use crate::error::{FieldError, FieldResult};
use crate::load::Context;
use crate::model::{ObjectRef, WeightedBackend};
use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer, de};
use std::collections::BTreeMap;

/// The metadata fields we read. Other metadata (labels, uid, managedFields...) has no effect
/// on the waypoint and is accepted, so that `kubectl get -o yaml` output loads.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Metadata {
    pub name: Option<String>,
    /// `default` when absent, as `kubectl apply` without `-n` in the default context.
    pub namespace: Option<String>,
    /// RFC 3339 as Kubernetes writes it; orders HTTPRoutes of equal precedence.
    pub creation_timestamp: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The namespace objects without `metadata.namespace` are in.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

/// Resolves an Istio host (`reviews`, `reviews.ns`, `reviews.ns.svc`,
/// `reviews.ns.svc.cluster.local` or any other cluster domain) to the Service it names.
pub(crate) fn service_host(
    host: &str,
    default_namespace: &str,
    field: &str,
) -> FieldResult<ObjectRef> {
    let refuse = |why: &str| {
        FieldError::new(
            field,
            format!(
                "host `{host}` {why}: expected a Kubernetes service (`name`, `name.namespace` \
                 or `name.namespace.svc.<cluster domain>`)"
            ),
        )
    };
    if host.contains('*') {
        return Err(refuse("is a wildcard"));
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels.iter().any(|l| !is_dns_label(l)) {
        return Err(refuse("is not a DNS name"));
    }
    match labels.as_slice() {
        [name] => Ok(ObjectRef::new(default_namespace, name)),
        [name, namespace] => Ok(ObjectRef::new(namespace, name)),
        [name, namespace, "svc", ..] => Ok(ObjectRef::new(namespace, name)),
        _ => Err(refuse("is not a service of this cluster")),
    }
}

/// RFC 1123 label, as Kubernetes names are.
fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

pub(crate) fn header_name(name: &str, field: &str) -> FieldResult<HeaderName> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| FieldError::new(field, format!("`{name}` is not a valid HTTP header name")))
}

pub(crate) fn header_value(value: &str, field: &str) -> FieldResult<HeaderValue> {
    HeaderValue::from_str(value)
        .map_err(|_| FieldError::new(field, format!("`{value}` is not a valid HTTP header value")))
}

/// A host (with an optional port) that a rewrite or redirect sends in `Host` or
/// `Location`: checked here, so that a bad one is a load error, not a request that silently
/// keeps its old host.
pub(crate) fn authority(value: &Option<String>, field: &str) -> FieldResult<Option<String>> {
    let Some(v) = value else { return Ok(None) };
    let ok = !v.is_empty()
        && !v.contains('@')
        && v.parse::<http::uri::Authority>().is_ok()
        && HeaderValue::from_str(v).is_ok();
    if !ok {
        return Err(FieldError::new(
            field,
            format!("`{v}` is not a valid host (and optional port)"),
        ));
    }
    Ok(Some(v.clone()))
}

/// A path that a rewrite or redirect sets: only characters a request target may hold.
pub(crate) fn uri_path(value: &str, field: &str) -> FieldResult<String> {
    if value.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(FieldError::new(
            field,
            format!("`{value}` is not a valid URL path"),
        ));
    }
    Ok(value.to_owned())
}

/// Compiles a pattern that must match the whole value (Envoy's RE2 `safe_regex` semantics).
pub(crate) fn full_regex(pattern: &str, field: &str) -> FieldResult<regex::Regex> {
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        FieldError::new(
            field,
            format!(
                "invalid regular expression `{pattern}`: {}",
                regex_reason(&e.to_string())
            ),
        )
    })
}

/// The regex crate's message draws the pattern and ends in `error: <what>`: keep `<what>`.
fn regex_reason(text: &str) -> &str {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or(text)
}

/// Checks a percentage is within 0..=100.
pub(crate) fn percent(value: f64, field: &str) -> FieldResult<f64> {
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(FieldError::new(
            field,
            format!("{value} is not a percentage between 0 and 100"),
        ))
    }
}

/// Checks an HTTP status code is within 200..=599 (Istio's and Gateway API's range for the
/// statuses we emit).
pub(crate) fn status_code(code: u32, field: &str) -> FieldResult<u16> {
    match u16::try_from(code) {
        Ok(c) if (200..=599).contains(&c) => Ok(c),
        _ => Err(FieldError::new(
            field,
            format!("{code} is not an HTTP status between 200 and 599"),
        )),
    }
}

/// A port number given as a string (Istio AuthorizationPolicy `ports: ["8080"]`) or an integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PortString(pub u16);

impl<'de> Deserialize<'de> for PortString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl de::Visitor<'_> for Visit {
            type Value = PortString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number 1..65535 (as a string, as Istio writes it)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortString, E> {
                match v.parse::<u16>() {
                    Ok(p) if p > 0 => Ok(PortString(p)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortString, E> {
                match u16::try_from(v) {
                    Ok(p) if p > 0 => Ok(PortString(p)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortString, E> {
                match u16::try_from(v) {
                    Ok(p) if p > 0 => Ok(PortString(p)),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_host_forms() {
        let r = |h| service_host(h, "app", "spec.host");
        assert_eq!(r("reviews"), Ok(ObjectRef::new("app", "reviews")));
        assert_eq!(r("reviews.prod"), Ok(ObjectRef::new("prod", "reviews")));
        assert_eq!(r("reviews.prod.svc"), Ok(ObjectRef::new("prod", "reviews")));
        assert_eq!(
            r("reviews.prod.svc.cluster.local"),
            Ok(ObjectRef::new("prod", "reviews"))
        );
        assert_eq!(
            r("reviews.prod.svc.corp.example"),
            Ok(ObjectRef::new("prod", "reviews"))
        );
    }

    #[test]
    fn service_host_refusals_name_the_field() {
        for bad in ["*.example.com", "www.example.com", "Reviews", "", "a..b"] {
            let err = service_host(bad, "app", "spec.hosts[1]").expect_err(bad);
            assert_eq!(err.field, "spec.hosts[1]");
            assert!(err.message.contains(&format!("`{bad}`")), "{}", err.message);
        }
    }

    #[test]
    fn regex_is_anchored_and_errors_name_the_pattern() {
        let re = full_regex("/v[0-9]+", "f").expect("valid");
        assert!(re.is_match("/v12"));
        assert!(!re.is_match("/v12/x"));
        assert!(!re.is_match("x/v1"));
        let err = full_regex("/v[0-9", "spec.x").expect_err("invalid");
        assert_eq!(err.field, "spec.x");
        assert_eq!(
            err.message,
            "invalid regular expression `/v[0-9`: unclosed character class"
        );
    }
}

/// The Gateway API group.
pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// What an HTTPRoute's `parentRefs[]` or a policy's `targetRefs[]` names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reference {
    Service,
    /// This waypoint's own Gateway.
    ThisWaypoint,
    /// Some other Gateway: not ours to serve.
    OtherGateway,
}

/// Classifies a reference of `group` and `kind` to `object`. Any other kind is refused at
/// `{at}.kind`; `what` ("parent", "target") names the reference in the message.
pub(crate) fn reference(
    group: &str,
    kind: &str,
    object: &ObjectRef,
    cx: &Context<'_>,
    at: &str,
    what: &str,
) -> FieldResult<Reference> {
    match (group, kind) {
        ("" | "core", "Service") => Ok(Reference::Service),
        (GATEWAY_GROUP, "Gateway") if object == cx.waypoint => Ok(Reference::ThisWaypoint),
        (GATEWAY_GROUP, "Gateway") => {
            tracing::debug!(object = %cx.object, gateway = %object, "{what} is another Gateway");
            Ok(Reference::OtherGateway)
        }
        (group, kind) => Err(FieldError::new(
            format!("{at}.kind"),
            format!(
                "{what} `{kind}` of group `{group}` is not supported: expected a Service \
                 (group \"\") or a Gateway (group {GATEWAY_GROUP})"
            ),
        )),
    }
}

/// Checks that `status` is a redirect status.
pub(crate) fn redirect_status(status: u32, field: String) -> FieldResult<u16> {
    if [301, 302, 303, 307, 308].contains(&status) {
        return Ok(status as u16);
    }
    Err(FieldError::new(
        field,
        format!("{status} is not a redirect status: expected 301, 302, 303, 307 or 308"),
    ))
}

/// Checks that at least one backend has a positive weight.
pub(crate) fn some_weight(backends: &[WeightedBackend], field: String) -> FieldResult<()> {
    if backends.iter().all(|b| b.weight == 0) {
        return Err(FieldError::new(
            field,
            "every weight is 0: expected at least one positive weight",
        ));
    }
    Ok(())
}
