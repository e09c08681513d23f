//! Gateway API `ReferenceGrant` (`gateway.networking.k8s.io/v1beta1`, also `v1` and
//! `v1alpha2`): which namespaces' routes
//! may send to a namespace's Services. An HTTPRoute `backendRef` (or mirror) to a Service in
//! another namespace is honoured only when a grant in that namespace allows it; otherwise its
//! share of requests gets 500, as the Gateway API requires (`RefNotPermitted`), and a mirror is
//! not sent.

use crate::build::Translated;
use crate::error::{FieldError, FieldResult};
use crate::load::Context;
use crate::model::ObjectRef;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    from: Vec<From>,
    to: Vec<To>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct From {
    group: String,
    kind: String,
    namespace: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct To {
    group: String,
    kind: String,
    name: Option<String>,
}

/// A translated grant: HTTPRoutes of `from` namespaces may use these Services of `namespace`.
#[derive(Clone, Debug)]
pub(crate) struct Grant {
    namespace: String,
    /// Namespaces whose HTTPRoutes the grant admits.
    from: Vec<String>,
    /// Service names admitted; `None` admits every Service of the namespace.
    to: Vec<Option<String>>,
}

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

pub(crate) fn translate(spec: Spec, cx: &Context<'_>) -> FieldResult<Option<Translated>> {
    if spec.from.is_empty() {
        return Err(FieldError::new(
            "spec.from",
            "must name at least one source",
        ));
    }
    if spec.to.is_empty() {
        return Err(FieldError::new("spec.to", "must name at least one target"));
    }
    // Other sources (Gateways, GRPCRoutes...) and targets (Secrets...) are valid grants that
    // concern nothing the waypoint does.
    let from: Vec<String> = spec
        .from
        .into_iter()
        .filter(|f| f.group == GATEWAY_GROUP && f.kind == "HTTPRoute")
        .map(|f| f.namespace)
        .collect();
    let to: Vec<Option<String>> = spec
        .to
        .into_iter()
        .filter(|t| (t.group.is_empty() || t.group == "core") && t.kind == "Service")
        .map(|t| t.name)
        .collect();
    Ok(Some(Translated::ReferenceGrant(Grant {
        namespace: cx.object.namespace.clone(),
        from,
        to,
    })))
}

/// Whether an HTTPRoute in `route_namespace` may send to `service`.
pub(crate) fn permits(grants: &[Grant], route_namespace: &str, service: &ObjectRef) -> bool {
    service.namespace == route_namespace
        || grants.iter().any(|g| {
            g.namespace == service.namespace
                && g.from.iter().any(|ns| ns == route_namespace)
                && g.to
                    .iter()
                    .any(|name| name.as_ref().is_none_or(|n| *n == service.name))
        })
}
