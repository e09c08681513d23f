//! Istio `VirtualService` (`networking.istio.io/v1`, `v1beta1`, `v1alpha3`) for mesh traffic:
//! `http[]` routes in order, the first match wins.
//!
//! A VirtualService whose `gateways` is not empty and does not contain `mesh` is for an
//! ingress Gateway: it is skipped (debug log), as Istio does for mesh traffic.
//! Accepted and ignored: `exportTo` (visibility is the control plane's business: the folder
//! holds what this waypoint is meant to apply), `match[].name`, `retries.retryRemoteLocalities`
//! (one waypoint, no locality). Refused by name, as every field not in the types below:
//! `tcp`, `tls`, `delegate`, `corsPolicy`, `match[].sourceLabels`, `match[].gateways`,
//! `match[].authority`, `match[].scheme`, `match[].ignoreUriCase`, `directResponse.body`,
//! `rewrite.uriRegexRewrite`, `redirect.derivePort`, `fault.abort.grpcStatus`, gRPC retry
//! conditions, mirror subsets, and per-destination `headers` when a route has several
//! destinations.

mod resilience;
mod route;

use crate::build::{Translated, VirtualRoutes};
use crate::error::{FieldError, FieldResult};
use crate::fields::service_host;
use crate::load::Context;
use route::HttpRoute;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Spec {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    gateways: Vec<String>,
    #[serde(default)]
    http: Vec<HttpRoute>,
    #[serde(default, rename = "exportTo")]
    _export_to: Vec<String>,
}

pub(crate) fn translate(spec: Spec, cx: &Context<'_>) -> FieldResult<Option<Translated>> {
    if !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == "mesh") {
        tracing::debug!(virtual_service = %cx.object, "skipped: bound to gateways, not `mesh`");
        return Ok(None);
    }
    if spec.hosts.is_empty() {
        return Err(FieldError::new(
            "spec.hosts",
            "missing: expected at least one service host",
        ));
    }
    let namespace = &cx.object.namespace;
    let services = spec
        .hosts
        .iter()
        .enumerate()
        .map(|(i, host)| service_host(host, namespace, &format!("spec.hosts[{i}]")))
        .collect::<FieldResult<Vec<_>>>()?;
    let mut entries = Vec::new();
    for (i, http) in spec.http.iter().enumerate() {
        entries.extend(route::entries(http, &format!("spec.http[{i}]"), cx)?);
    }
    Ok(Some(Translated::VirtualService(VirtualRoutes {
        services,
        entries,
    })))
}
