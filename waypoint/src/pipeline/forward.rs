//! Sending a routed request to its backend: endpoint choice, circuit breaking, attempts under
//! the per-try and route timeouts, retries with backoff, and the response (or the error the
//! client sees, with Envoy's response flags).

use super::retry::{self, Attempt};
use super::{Body, boxed, full, remaining};
use crate::Waypoint;
use crate::metrics::RequestRecord;
use crate::server::Tunnel;
use crate::upstream::SendError;
use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;
use waypoint_rules::{Mirror, RetryPolicy, RouteRule, TrafficPolicy, WeightedBackend};

/// A request body: kept whole (so it can be sent again), or streamed through once.
pub enum RequestBody {
    Kept(Bytes),
    Streaming(Option<Body>),
}

impl RequestBody {
    /// Reads the body if it is small enough to keep (see [`super::RETRY_BODY_LIMIT`]).
    pub async fn read(
        parts: &Parts,
        incoming: Incoming,
        record: &mut RequestRecord,
    ) -> Result<Self, BodyError> {
        use http_body::Body as _;
        let length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let small = match length {
            Some(n) => n <= super::RETRY_BODY_LIMIT,
            None => incoming.is_end_stream(),
        };
        if small {
            let bytes = collect_within(incoming, super::BODY_IDLE_TIMEOUT).await?;
            record.info.request_bytes = bytes.len() as u64;
            return Ok(RequestBody::Kept(bytes));
        }
        // Streamed: its declared length is what the metrics get.
        record.info.request_bytes = length.unwrap_or(0);
        Ok(RequestBody::Streaming(Some(boxed(incoming))))
    }

    /// The body for the next attempt; `None` once a streamed body has been sent.
    fn next(&mut self) -> Option<Body> {
        match self {
            RequestBody::Kept(b) => Some(full(b.clone())),
            RequestBody::Streaming(b) => b.take(),
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("no request body bytes for {0:?}")]
    Idle(std::time::Duration),
    #[error(transparent)]
    Read(Box<dyn std::error::Error + Send + Sync>),
}

/// Reads `body` whole, giving up when it stays silent for `idle`: a client trickling its
/// body would otherwise hold the request (and what was read of it) for ever.
async fn collect_within<B>(mut body: B, idle: std::time::Duration) -> Result<Bytes, BodyError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut bytes = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(BodyError::Idle(idle)),
            Ok(None) => return Ok(bytes.freeze()),
            Ok(Some(Err(e))) => return Err(BodyError::Read(e.into())),
            // Trailers are dropped, as `collect` did.
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
        }
    }
}

/// The request to send: `parts` with `body`, in the form the upstream protocol wants (an
/// absolute URI for HTTP/2, origin form for HTTP/1.1).
fn build(parts: &Parts, body: Body, h2: bool) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.headers_mut() = parts.headers.clone();
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    *req.uri_mut() = if h2 {
        // The host was checked to be a bare authority (see `canonicalize`).
        http::Uri::builder()
            .scheme("http")
            .authority(host)
            .path_and_query(pq)
            .build()
            .unwrap_or_default()
    } else {
        pq.parse().unwrap_or_default()
    };
    if h2 {
        // HTTP/2 carries the host as `:authority`.
        req.headers_mut().remove(http::header::HOST);
    }
    *req.version_mut() = if h2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    req
}

/// The protocol towards the backend: HTTP/1.1, which every HTTP server speaks, except for
/// gRPC, which needs HTTP/2 (the local file declares no port protocols to go by).
fn upstream_h2(tunnel: &Tunnel, grpc: bool) -> bool {
    tunnel.h2 && grpc
}

/// Envoy's cluster name for a backend: `outbound|<port>|<subset>|<host>`.
fn cluster_name(hostname: &str, port: u16, subset: Option<&str>) -> String {
    format!("outbound|{port}|{}|{hostname}", subset.unwrap_or(""))
}

/// Copies a kept request to a mirror backend; the answer is dropped.
pub fn mirror(
    wp: &Arc<Waypoint>,
    tunnel: &Arc<Tunnel>,
    m: &Mirror,
    parts: &Parts,
    body: &RequestBody,
    grpc: bool,
) {
    let RequestBody::Kept(bytes) = body else {
        return;
    };
    let state = wp.state.snapshot();
    let Some(svc) = state.service_by_name(&m.service.namespace, &m.service.name) else {
        tracing::debug!(mirror = %m.service, "mirror service unknown");
        return;
    };
    let port = m.port.unwrap_or(tunnel.port);
    let candidates = wp.endpoints.candidates(&state, svc, port, None);
    let Some(ep) = wp.endpoints.pick(&candidates, Default::default(), &[]) else {
        return;
    };
    let mut parts = parts.clone();
    // Envoy marks shadowed requests by appending `-shadow` to the host.
    if let Some(h) = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        let shadow = super::filters::shadow_host(h);
        if let Ok(v) = http::HeaderValue::from_str(&shadow) {
            parts.headers.insert(http::header::HOST, v);
        }
    }
    let h2 = upstream_h2(tunnel, grpc);
    let req = build(&parts, full(bytes.clone()), h2);
    let (wp, tunnel) = (wp.clone(), tunnel.clone());
    tokio::spawn(async move {
        match wp
            .connections
            .send(&ep, h2, req, Some(tunnel.client_addr), None)
            .await
        {
            Ok(resp) => {
                let _ = resp.into_body().collect().await;
            }
            Err(e) => tracing::debug!(error = %e, "mirror failed"),
        }
    });
}

/// The client's answer when no attempt produced a response.
fn failure(record: &mut RequestRecord, a: &Attempt, why: String) -> Response<Body> {
    let (status, flag, text) = match a {
        Attempt::ConnectFailure => (
            StatusCode::SERVICE_UNAVAILABLE,
            "UF",
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
        ),
        Attempt::Reset => (
            StatusCode::SERVICE_UNAVAILABLE,
            "UC",
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
        ),
        Attempt::Refused => (
            StatusCode::SERVICE_UNAVAILABLE,
            "UR",
            "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset",
        ),
        Attempt::PerTryTimeout | Attempt::Status(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            "UT",
            "upstream request timeout",
        ),
    };
    record.info.flag(flag);
    record.info.detail = Some(why);
    plain(status, text)
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

/// Where a routed request goes: its rule, the backend picked by weight, and the backend's
/// DestinationRule policy, if any.
pub struct Target<'a> {
    pub rule: &'a RouteRule,
    pub backend: &'a WeightedBackend,
    pub traffic: Option<&'a TrafficPolicy>,
}

/// Envoy's `NC` (no such cluster): an empty `status`, with `why` in the access log.
fn no_cluster(record: &mut RequestRecord, status: StatusCode, why: String) -> Response<Body> {
    record.info.flag("NC");
    record.info.detail = Some(why);
    plain(status, "")
}

/// Sends the request to its target with the rule's timeouts and retries.
pub async fn forward(
    wp: &Arc<Waypoint>,
    tunnel: &Arc<Tunnel>,
    target: Target<'_>,
    parts: Parts,
    mut body: RequestBody,
    record: &mut RequestRecord,
) -> Response<Body> {
    let Target {
        rule,
        backend,
        traffic,
    } = target;
    let state = wp.state.snapshot();
    let port = backend.port.unwrap_or(tunnel.port);
    let fallback;
    let traffic = match traffic {
        Some(t) => t,
        None => {
            fallback = TrafficPolicy::default();
            &fallback
        }
    };
    if let Some(why) = &backend.refused {
        return no_cluster(record, backend.unresolved, why.clone());
    }
    let svc = state
        .service_by_name(&backend.service.namespace, &backend.service.name)
        .cloned();
    let (candidates, cluster) = match svc {
        Some(svc) => {
            let subset = match &backend.subset {
                Some(name) => match traffic.subsets.get(name) {
                    Some(labels) => Some(labels),
                    None => {
                        let why = format!(
                            "subset {name} of {} is not defined by a DestinationRule",
                            backend.service
                        );
                        return no_cluster(record, StatusCode::SERVICE_UNAVAILABLE, why);
                    }
                },
                None => None,
            };
            record.info.dst_service = Some(svc.clone());
            (
                wp.endpoints.candidates(&state, &svc, port, subset),
                cluster_name(&svc.hostname, port, backend.subset.as_deref()),
            )
        }
        // A workload addressed directly: that workload.
        None if tunnel.service.is_none() && backend.service == tunnel.target => {
            let Some(w) = state.workload_by_ip(&wp.cfg.network, tunnel.authority.ip()) else {
                return plain(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
            };
            (
                vec![wp.endpoints.workload(w.clone(), tunnel.authority)],
                format!("inbound-vip|{}|http|{}", tunnel.authority.port(), w.name),
            )
        }
        None => {
            let why = format!("backend service {} unknown", backend.service);
            return no_cluster(record, backend.unresolved, why);
        }
    };
    let Some(_admission) = wp
        .breakers
        .admit(&backend.service, &traffic.connection_pool)
        .await
    else {
        record.info.flag("UO");
        record.info.detail = Some(format!("circuit breaker of {} open", backend.service));
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        );
    };

    let h2 = upstream_h2(tunnel, record.info.grpc);
    let policy = rule
        .retry
        .clone()
        .unwrap_or_else(RetryPolicy::istio_default);
    // Checked: a timeout past what an `Instant` can hold is no deadline, not a panic.
    let deadline = rule
        .timeout
        .filter(|t| !t.is_zero())
        .and_then(|t| tokio::time::Instant::now().checked_add(t));
    let mut tried = Vec::new();
    let mut n = 0u32;
    loop {
        if n > 0 {
            let wait = retry::backoff(&policy, n);
            if remaining(deadline).is_some_and(|left| left <= wait) {
                return timed_out(record);
            }
            tokio::time::sleep(wait).await;
        }
        let Some(ep) = wp
            .endpoints
            .pick(&candidates, traffic.load_balancer, &tried)
        else {
            record.info.flag("UH");
            record.info.detail = Some(format!("{cluster} has no healthy endpoint"));
            return plain(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
        };
        // Only a kept body is retried (see `may_retry`), so a body is always at hand here.
        let Some(req_body) = body.next() else {
            record.info.detail = Some("the streamed request body was already sent".into());
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "no request body to retry with",
            );
        };
        n += 1;
        record.info.attempts = n;
        record.info.dst_workload = Some(ep.workload.clone());
        record.info.dst_addr = Some(ep.addr);
        tried.push(ep.addr);
        wp.metrics.attempt(&cluster, n > 1);
        let _in_flight = ep.start();
        let req = build(&parts, req_body, h2);
        let send = wp.connections.send(
            &ep,
            h2,
            req,
            Some(tunnel.client_addr),
            traffic.connection_pool.connect_timeout,
        );
        let limit = match (policy.per_try_timeout, remaining(deadline)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let result = match limit {
            Some(l) => tokio::time::timeout(l, send).await.ok(),
            None => Some(send.await),
        };
        if result.is_none() && remaining(deadline).is_some_and(|l| l.is_zero()) {
            wp.endpoints
                .report(&ep, true, traffic.outlier.as_ref(), &candidates);
            return timed_out(record);
        }
        let (attempt, why, response) = match result {
            Some(Ok(resp)) => (
                Attempt::Status(resp.status().as_u16()),
                String::new(),
                Some(resp),
            ),
            Some(Err(e)) => {
                let a = match &e {
                    SendError::Connect { .. } => Attempt::ConnectFailure,
                    SendError::Reset { .. } => Attempt::Reset,
                    SendError::Refused { .. } => Attempt::Refused,
                };
                (a, e.to_string(), None)
            }
            None => (
                Attempt::PerTryTimeout,
                format!("{} did not answer within the per-try timeout", ep.addr),
                None,
            ),
        };
        let failed = !matches!(attempt, Attempt::Status(s) if s < 500);
        wp.endpoints
            .report(&ep, failed, traffic.outlier.as_ref(), &candidates);
        let may_retry = n <= policy.attempts
            && matches!(body, RequestBody::Kept(_))
            && retry::retriable(&policy.on, &attempt);
        if may_retry {
            tracing::debug!(attempt = n, endpoint = %ep.addr, outcome = ?attempt, "retrying");
            continue;
        }
        if n > 1 && retry::retriable(&policy.on, &attempt) {
            record.info.flag("URX");
        }
        return match response {
            Some(resp) => {
                let (head, incoming) = resp.into_parts();
                Response::from_parts(head, boxed(incoming))
            }
            None => failure(record, &attempt, why),
        };
    }
}

fn timed_out(record: &mut RequestRecord) -> Response<Body> {
    record.info.flag("UT");
    record.info.detail = Some("the route timeout expired".into());
    plain(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    /// Sends its bytes as one frame, then nothing more, never ending.
    struct Stalls(Option<Bytes>);

    impl http_body::Body for Stalls {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            match self.0.take() {
                Some(b) => Poll::Ready(Some(Ok(http_body::Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    #[tokio::test]
    async fn a_body_that_goes_silent_is_given_up_and_a_whole_one_is_kept() {
        let idle = Duration::from_millis(50);
        let stalled = collect_within(Stalls(Some(Bytes::from_static(b"part"))), idle).await;
        assert!(
            matches!(stalled, Err(BodyError::Idle(d)) if d == idle),
            "{stalled:?}"
        );
        let whole = collect_within(http_body_util::Full::new(Bytes::from_static(b"all")), idle)
            .await
            .expect("a body that ends is read");
        assert_eq!(&whole[..], b"all");
    }
}
