//! One HTTP request through the waypoint, in Istio's order: L7 authorization, route match,
//! redirect, fault injection, filters, mirrors, then attempts to the chosen backend's
//! endpoints under the route's timeout and retry policy.

mod body;
mod filters;
mod forward;
pub mod retry;

pub use body::{Body, Metered, boxed, full};

use crate::Waypoint;
use crate::metrics::{RequestInfo, RequestRecord};
use crate::server::Tunnel;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Duration;
use waypoint_rules::{Action, RequestView, RouteRule, WeightedBackend};

/// Request bodies up to this size are kept so that the request can be retried or mirrored
/// (Envoy's default buffer limit is 1 MiB too); larger or unsized (chunked) bodies stream
/// through and are tried once.
pub const RETRY_BODY_LIMIT: u64 = 1024 * 1024;

/// Serves one request that arrived in `tunnel`.
pub async fn handle(
    wp: Arc<Waypoint>,
    tunnel: Arc<Tunnel>,
    req: Request<Incoming>,
) -> Response<Metered> {
    let (mut parts, incoming) = req.into_parts();
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let info = RequestInfo {
        src_addr: Some(tunnel.client_addr),
        src_identity: Some(tunnel.peer_identity.clone()),
        src_workload: tunnel.client_workload.clone(),
        dst_service: tunnel.service.clone(),
        grpc: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        authority: host.clone(),
        ..Default::default()
    };
    let mut record = RequestRecord::new(wp.metrics.clone(), info);
    let rules = wp.rules.snapshot();
    let view = RequestView {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        host: &host,
        port: tunnel.port,
    };

    if let Err(denied) = rules.authorize(&tunnel.target, &tunnel.peer(), &view) {
        record.info.detail = Some(denied.to_string());
        return local(record, StatusCode::FORBIDDEN, "RBAC: access denied", None);
    }

    let has_routes = rules.routes.contains_key(&tunnel.target) || !rules.gateway_routes.is_empty();
    let rule: Arc<RouteRule> = match rules.route(&tunnel.target, &view) {
        Some(entry) => entry.rule.clone(),
        None if has_routes => {
            record.info.flag("NR");
            record.info.detail = Some("no route matched".into());
            return local(record, StatusCode::NOT_FOUND, "", None);
        }
        // No rules for this service: straight to the service the client asked for.
        None => Arc::new(default_rule(&tunnel)),
    };
    record.info.route = rule.name.clone();

    let backends = match &rule.action {
        Action::Redirect(r) => {
            let bare_host = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
            let location = filters::redirect_location(r, bare_host, &parts.uri);
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            return local(record, status, "", Some(location));
        }
        Action::DirectResponse { status } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return local(record, status, "", None);
        }
        Action::Forward(b) => b,
    };

    if let Some(fault) = &rule.fault {
        if let Some(d) = &fault.delay
            && chance(d.percent)
        {
            record.info.flag("DI");
            tokio::time::sleep(d.fixed).await;
        }
        if let Some(a) = &fault.abort
            && chance(a.percent)
        {
            record.info.flag("FI");
            let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return local(record, status, "fault filter abort", None);
        }
    }

    filters::apply_headers(&rule.request_headers, &mut parts.headers);
    if let Some(rw) = &rule.rewrite {
        filters::apply_rewrite(rw, &mut parts.uri, &mut parts.headers);
    }
    prepare_headers(&mut parts.headers, &host);

    let Some(backend) = pick_backend(backends) else {
        record.info.detail = Some("every backend has weight 0".into());
        return local(record, StatusCode::INTERNAL_SERVER_ERROR, "", None);
    };
    let body = forward::RequestBody::read(&parts, incoming, &mut record).await;
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            record.info.flag("DC");
            record.info.detail = Some(format!("reading the request body: {e}"));
            return local(record, StatusCode::BAD_REQUEST, "", None);
        }
    };
    for m in &rule.mirrors {
        if chance(m.percent) {
            forward::mirror(&wp, &tunnel, m, &parts, &body, record.info.grpc);
        }
    }
    let response = forward::forward(
        &wp,
        &tunnel,
        forward::Target {
            rule: &rule,
            backend,
            traffic: rules.traffic.get(&backend.service),
        },
        parts,
        body,
        &mut record,
    )
    .await;
    let (mut head, resp_body) = response.into_parts();
    filters::apply_headers(&rule.response_headers, &mut head.headers);
    record.info.status = head.status.as_u16();
    Response::from_parts(head, Metered::new(resp_body, record))
}

/// Istio's `percentage`: true `percent` out of 100 times.
fn chance(percent: f64) -> bool {
    percent >= 100.0 || fastrand::f64() * 100.0 < percent
}

/// A backend by weight.
fn pick_backend(backends: &[WeightedBackend]) -> Option<&WeightedBackend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut r = fastrand::u64(..total);
    backends.iter().find(|b| {
        let w = u64::from(b.weight);
        if r < w {
            true
        } else {
            r -= w;
            false
        }
    })
}

/// The route for a service without rules: the service itself, Istio's default retries.
fn default_rule(tunnel: &Tunnel) -> RouteRule {
    RouteRule {
        name: "default".into(),
        action: Action::Forward(vec![WeightedBackend {
            service: tunnel.target.clone(),
            port: None,
            subset: None,
            weight: 1,
        }]),
        request_headers: Default::default(),
        response_headers: Default::default(),
        rewrite: None,
        mirrors: Vec::new(),
        fault: None,
        timeout: None,
        retry: None,
    }
}

/// Drops hop-by-hop headers, keeps `Host`, and adds what Envoy adds (`x-request-id`,
/// `x-forwarded-proto`).
fn prepare_headers(h: &mut http::HeaderMap, host: &str) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
    ] {
        h.remove(name);
    }
    if !h.contains_key(http::header::HOST)
        && let Ok(v) = HeaderValue::from_str(host)
    {
        h.insert(http::header::HOST, v);
    }
    if !h.contains_key("x-request-id")
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            fastrand::u32(..),
            fastrand::u16(..),
            fastrand::u16(..0x1000),
            fastrand::u16(..),
            fastrand::u64(..1 << 48)
        ))
    {
        h.insert("x-request-id", v);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
}

/// A response the waypoint makes itself.
pub fn local(
    mut record: RequestRecord,
    status: StatusCode,
    text: &'static str,
    location: Option<String>,
) -> Response<Metered> {
    record.info.status = status.as_u16();
    let mut r = Response::new(Metered::new(full(text), record));
    *r.status_mut() = status;
    if !text.is_empty() {
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        r.headers_mut().insert(http::header::LOCATION, l);
    }
    r
}

/// How long is left of `deadline`, if any.
fn remaining(deadline: Option<tokio::time::Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
}
