//! The agent's HTTP endpoints: admin (`/config_dump`), Prometheus `/metrics`, and readiness
//! `/healthz/ready`.

use crate::proxy::ProxyInputs;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;
use tokio::net::TcpListener;

pub type Handler =
    Arc<dyn Fn(&Request<hyper::body::Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

pub fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn not_found() -> Response<Full<Bytes>> {
    respond(StatusCode::NOT_FOUND, "text/plain", "not found\n")
}

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves HTTP/1.1 on `listener` with `handler` until `drain` fires.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    mut drain: tokio::sync::watch::Receiver<bool>,
    handler: Handler,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = drain.changed() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors, say: give them time to come back rather than spin.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let resp = handler(&req);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            // A client that sends its request head too slowly is cut off (hyper does this
            // only with a timer), so that slow clients cannot pile up connections.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(listener = name, error = %e, "HTTP connection error");
            }
        });
    }
}

/// `/metrics` on the metrics port.
pub fn metrics_handler(encode: impl Fn() -> String + Send + Sync + 'static) -> Handler {
    Arc::new(move |req| match req.uri().path() {
        "/metrics" | "/stats/prometheus" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            encode(),
        ),
        _ => not_found(),
    })
}

/// `/healthz/ready` on the readiness port: 200 once the agent serves, 503 before and while
/// draining.
pub fn readiness_handler(ready: Arc<AtomicBool>) -> Handler {
    Arc::new(move |req| match req.uri().path() {
        "/healthz/ready" if ready.load(Ordering::Relaxed) => {
            respond(StatusCode::OK, "text/plain", "ready\n")
        }
        "/healthz/ready" => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        _ => not_found(),
    })
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `/ebpf/log_level[?level=N]`: shows, or sets (0 off to 5 trace), the eBPF programs'
/// diagnostics level at run time (shared mode).
fn ebpf_log_level(
    req: &Request<hyper::body::Incoming>,
    level: Option<&tokio::sync::watch::Sender<u32>>,
) -> Response<Full<Bytes>> {
    let Some(level) = level else {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "no eBPF programs in dedicated mode\n",
        );
    };
    let asked = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("level=")));
    if let Some(v) = asked {
        match v.parse::<u32>() {
            Ok(n) if n <= 5 => {
                level.send_replace(n);
            }
            _ => {
                return respond(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("level `{v}`: expected 0 (off) to 5 (trace)\n"),
                );
            }
        }
    }
    respond(
        StatusCode::OK,
        "text/plain",
        format!("ebpf log level {}\n", *level.borrow()),
    )
}

/// `/config_dump` on the admin port: what the agent knows and the certificates it holds; and
/// `/ebpf/log_level`.
pub fn admin_handler(
    inputs: Arc<ProxyInputs>,
    ebpf_level: Option<tokio::sync::watch::Sender<u32>>,
) -> Handler {
    Arc::new(move |req| match req.uri().path() {
        "/ebpf/log_level" => ebpf_log_level(req, ebpf_level.as_ref()),
        "/config_dump" => {
            let state = inputs.state.snapshot();
            let certs: Vec<_> = inputs
                .certs
                .snapshot()
                .iter()
                .map(|c| {
                    json!({
                        "identity": c.identity.to_string(),
                        "notBefore": rfc3339(c.not_before),
                        "notAfter": rfc3339(c.not_after),
                        "renewAt": rfc3339(c.refresh_at()),
                        "chainLength": c.chain.len(),
                    })
                })
                .collect();
            let body = json!({
                "workloads": state.workloads().map(|w| w.as_ref()).collect::<Vec<_>>(),
                "services": state.services().map(|s| s.as_ref()).collect::<Vec<_>>(),
                "policies": state.policies().map(|p| p.as_ref()).collect::<Vec<_>>(),
                "certificates": certs,
                "hboneConnections": inputs.pool.connections(),
                "config": {
                    "proxyMode": format!("{:?}", inputs.cfg.proxy_mode),
                    "nodeName": inputs.cfg.node_name,
                    "trustDomain": inputs.cfg.trust_domain,
                    "clusterId": inputs.cfg.cluster_id,
                    "localXdsPath": inputs.cfg.local_xds_path,
                },
            });
            match serde_json::to_string_pretty(&body) {
                Ok(s) => respond(StatusCode::OK, "application/json", s),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        _ => not_found(),
    })
}
