//! One HTTP request through the waypoint, in Istio's order: path normalization (see
//! [`normalize`]) and the host, L7 authorization, route match, redirect, fault injection,
//! filters, mirrors, then attempts to the chosen backend's endpoints under the route's
//! timeout and retry policy.

mod body;
mod filters;
mod forward;
pub mod normalize;
pub mod retry;

pub use body::{Body, Metered, boxed, full};

use crate::Waypoint;
use crate::metrics::{RequestInfo, RequestRecord};
use crate::server::Tunnel;
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
use waypoint_rules::{Action, RequestView, RouteRule, Rules, WeightedBackend};

/// Request bodies up to this size are kept so that the request can be retried or mirrored
/// (Envoy's default buffer limit is 1 MiB too); larger or unsized (chunked) bodies stream
/// through and are tried once.
pub const RETRY_BODY_LIMIT: u64 = 1024 * 1024;
/// How long a kept request body may go without a byte before the request is answered 408
/// (Envoy's stream idle timeout, 5 minutes).
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Serves one request that arrived in `tunnel`.
pub async fn handle(
    wp: Arc<Waypoint>,
    tunnel: Arc<Tunnel>,
    req: Request<Incoming>,
) -> Response<Metered> {
    let (mut parts, incoming) = req.into_parts();
    let checked = canonicalize(&mut parts);
    let host = checked.as_ref().cloned().unwrap_or_default();
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
    if let Err(bad) = checked {
        record.info.detail = Some(bad.to_string());
        return local(record, StatusCode::BAD_REQUEST, "", None);
    }
    let rules = wp.rules.snapshot();
    let rule = match admit(&rules, &tunnel, &view(&parts, &host, tunnel.port)) {
        Ok(rule) => rule,
        Err(refusal) => {
            if let Some(flag) = refusal.flag {
                record.info.flag(flag);
            }
            record.info.detail = Some(refusal.detail);
            return local(record, refusal.status, refusal.text, None);
        }
    };
    record.info.route = rule.name.clone();

    let backends = match &rule.action {
        Action::Forward(b) => b,
        Action::Redirect(r) => {
            let location = filters::redirect_location(r, &host, &parts.uri);
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            return answered_by_rule(record, &rule, status, Some(location));
        }
        Action::DirectResponse { status } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return answered_by_rule(record, &rule, status, None);
        }
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
            let (flag, status) = match e {
                forward::BodyError::Idle(_) => ("SI", StatusCode::REQUEST_TIMEOUT),
                forward::BodyError::Read(_) => ("DC", StatusCode::BAD_REQUEST),
            };
            record.info.flag(flag);
            record.info.detail = Some(format!("reading the request body: {e}"));
            return local(record, status, "", None);
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

/// Why a request is answered 400 before any rule is looked at.
#[derive(Debug, thiserror::Error)]
enum BadRequest {
    #[error(transparent)]
    Path(#[from] normalize::InvalidPath),
    #[error("normalized request target `{0}` is not a valid URI")]
    Rebuilt(String),
    #[error("the request target's authority `{0}` has userinfo")]
    UserInfo(String),
    #[error("more than one Host header")]
    Hosts,
    #[error("the Host header is not a host[:port]")]
    HostValue,
}

/// Makes the request what authorization, routing and the backend all see, and returns its
/// host: the path normalized (see [`normalize`]; CONNECT and `OPTIONS *` have no path), and,
/// when the request target has an authority (absolute form, HTTP/2 `:authority`), that
/// authority as the one `Host`, as RFC 9112 section 3.2.2 says: a different `Host` must not
/// be what the backend gets while the authority is what was checked.
fn canonicalize(parts: &mut Parts) -> Result<String, BadRequest> {
    let has_path = !(parts.method == Method::CONNECT
        || (parts.method == Method::OPTIONS && parts.uri.path() == "*"));
    if has_path && let Cow::Owned(path) = normalize::path(parts.uri.path())? {
        let target = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(
            target
                .parse()
                .map_err(|_| BadRequest::Rebuilt(target.clone()))?,
        );
        parts.uri = Uri::from_parts(uri).map_err(|_| BadRequest::Rebuilt(target))?;
    }
    if let Some(authority) = parts.uri.authority() {
        let authority = authority.as_str();
        // RFC 9110 section 4.2.4: userinfo in an http(s) URI is an error.
        if authority.contains('@') {
            return Err(BadRequest::UserInfo(authority.to_owned()));
        }
        let mut hosts = parts.headers.get_all(http::header::HOST).iter();
        let already = matches!((hosts.next(), hosts.next()), (Some(h), None) if h == authority);
        if !already {
            let value = HeaderValue::from_str(authority).map_err(|_| BadRequest::HostValue)?;
            // `insert` drops every `Host` the client sent.
            parts.headers.insert(http::header::HOST, value);
        }
    }
    let mut hosts = parts.headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => Ok(String::new()),
        // Only a host[:port]: the value becomes the upstream URI's authority, where a `/`
        // or `?` in it would change the path the backend gets from the one checked here.
        (Some(h), None) => h
            .to_str()
            .ok()
            .filter(|h| {
                !h.contains('@')
                    && h.parse::<http::uri::Authority>()
                        .is_ok_and(|a| a.as_str().len() == h.len())
            })
            .map(str::to_owned)
            .ok_or(BadRequest::HostValue),
        (Some(_), Some(_)) => Err(BadRequest::Hosts),
    }
}

/// What matching and authorization see of a canonicalized request.
fn view<'a>(parts: &'a Parts, host: &'a str, port: u16) -> RequestView<'a> {
    RequestView {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        host,
        port,
    }
}

/// A request the waypoint answers itself, before sending anything.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    text: &'static str,
    flag: Option<&'static str>,
    detail: String,
}

/// L7 authorization, then the route, in Istio's order.
fn admit(
    rules: &Rules,
    tunnel: &Tunnel,
    view: &RequestView<'_>,
) -> Result<Arc<RouteRule>, Refusal> {
    if let Err(denied) = rules.authorize(&tunnel.target, &tunnel.peer(), view) {
        return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            text: "RBAC: access denied",
            flag: None,
            detail: denied.to_string(),
        });
    }
    let has_routes = rules.has_routes(&tunnel.target, view.port);
    match rules.route(&tunnel.target, view) {
        Some(entry) => Ok(entry.rule.clone()),
        None if has_routes => Err(Refusal {
            status: StatusCode::NOT_FOUND,
            text: "",
            flag: Some("NR"),
            detail: "no route matched".into(),
        }),
        // No rules for this service: straight to the service the client asked for.
        None => Ok(Arc::new(default_rule(tunnel))),
    }
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
            unresolved: http::StatusCode::SERVICE_UNAVAILABLE,
            refused: None,
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

/// Drops hop-by-hop headers, keeps `Host` (see [`canonicalize`]), and adds what Envoy adds
/// (`x-request-id`, `x-forwarded-proto`).
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

/// A redirect or direct response: it still gets the rule's response headers, as Envoy
/// finalizes a direct-response route's headers.
fn answered_by_rule(
    record: RequestRecord,
    rule: &RouteRule,
    status: StatusCode,
    location: Option<String>,
) -> Response<Metered> {
    let mut r = local(record, status, "", location);
    filters::apply_headers(&rule.response_headers, r.headers_mut());
    r
}

/// How long is left of `deadline`, if any.
fn remaining(deadline: Option<tokio::time::Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HOST;
    use waypoint_rules::ObjectRef;
    use ztunnel::identity::Identity;

    fn tunnel() -> Tunnel {
        let addr = std::net::SocketAddr::from(([10, 0, 0, 9], 9080));
        Tunnel {
            target: ObjectRef::new("app", "reviews"),
            service: None,
            authority: addr,
            port: 9080,
            peer_identity: Identity::new("cluster.local", "web", "frontend"),
            principal: "cluster.local/ns/web/sa/frontend".into(),
            client_addr: std::net::SocketAddr::from(([10, 0, 0, 5], 40000)),
            client_workload: None,
            h2: false,
        }
    }

    fn rules(yaml: &str) -> Rules {
        let waypoint = ObjectRef::new("app", "waypoint");
        waypoint_rules::load_str(std::path::Path::new("rules.yaml"), yaml, &waypoint)
            .expect("rules load")
    }

    fn parts(method: Method, target: &str) -> Parts {
        Request::builder()
            .method(method)
            .uri(target)
            .header(HOST, "reviews")
            .body(())
            .expect("request")
            .into_parts()
            .0
    }

    /// The status the waypoint answers with before forwarding, or `None`: forwarded, with
    /// the request as the backend would get it.
    fn decide(rules: &Rules, parts: &mut Parts) -> Option<StatusCode> {
        let tunnel = tunnel();
        let host = match canonicalize(parts) {
            Ok(host) => host,
            Err(_) => return Some(StatusCode::BAD_REQUEST),
        };
        admit(rules, &tunnel, &view(parts, &host, tunnel.port))
            .err()
            .map(|r| r.status)
    }

    const DENY_ADMIN: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
"#;

    #[test]
    fn a_deny_on_a_path_holds_for_every_spelling_of_it() {
        let rules = rules(DENY_ADMIN);
        for target in [
            "/admin",
            "/./admin",
            "/a/../admin",
            "/%61dmin",
            "/%2e/admin",
            "/x/%2E%2E/admin/users",
            "http://reviews/x/../admin",
        ] {
            let mut p = parts(Method::GET, target);
            assert_eq!(
                decide(&rules, &mut p),
                Some(StatusCode::FORBIDDEN),
                "{target}"
            );
        }
        // BASE normalization keeps escaped slashes and does not merge slashes.
        for target in ["/public", "/a%2F..%2Fadmin", "//admin"] {
            let mut p = parts(Method::GET, target);
            assert_eq!(decide(&rules, &mut p), None, "{target}");
        }
    }

    #[test]
    fn a_host_that_is_not_a_bare_authority_is_refused() {
        // An HTTP/2 request without `:authority` keeps the client's Host, which becomes the
        // upstream URI's authority: a `/` or `?` in it would reach the backend as path.
        let rules = rules(DENY_ADMIN);
        for host in ["x/admin?", "x?/admin", "x#", "a@b", "[x", ""] {
            let mut p = parts(Method::GET, "/public");
            p.headers.insert(HOST, HeaderValue::from_static(host));
            assert_eq!(
                decide(&rules, &mut p),
                Some(StatusCode::BAD_REQUEST),
                "{host:?}"
            );
        }
        for host in ["reviews", "reviews:9080", "10.0.0.9:9080", "[fd00::9]:9080"] {
            let mut p = parts(Method::GET, "/public");
            p.headers.insert(HOST, HeaderValue::from_static(host));
            assert_eq!(decide(&rules, &mut p), None, "{host:?}");
        }
    }

    #[test]
    fn the_backend_gets_the_normalized_path_and_the_query_untouched() {
        let rules = rules(DENY_ADMIN);
        let mut p = parts(Method::GET, "/api/./v1/%7Euser/../items?next=%2e%2E&x=/./");
        assert_eq!(decide(&rules, &mut p), None);
        assert_eq!(p.uri, "/api/v1/items?next=%2e%2E&x=/./");
        let mut p = parts(Method::GET, "http://reviews:9080/a/%2e%2e/b%2fc?q");
        assert_eq!(decide(&rules, &mut p), None);
        assert_eq!(p.uri, "http://reviews:9080/b%2Fc?q");
    }

    #[test]
    fn routes_match_the_normalized_path() {
        let rules = rules(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: app}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules:
  - matches: [{path: {type: Exact, value: /v1/items}}]
    backendRefs: [{name: reviews, port: 9080}]
"#,
        );
        let mut p = parts(Method::GET, "/v1/old/../%69tems");
        assert_eq!(decide(&rules, &mut p), None);
        let mut p = parts(Method::GET, "/v1/other");
        assert_eq!(decide(&rules, &mut p), Some(StatusCode::NOT_FOUND));
    }

    /// A route for another port of the service leaves this port on the default route
    /// (Envoy's passthrough), not 404.
    #[test]
    fn a_port_no_route_names_takes_the_default_route() {
        let rules = rules(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: app}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews, port: 8080}]
  rules:
  - matches: [{path: {type: Exact, value: /only}}]
    backendRefs: [{name: reviews, port: 8080}]
"#,
        );
        // The tunnel is to port 9080.
        let mut p = parts(Method::GET, "/other");
        assert_eq!(decide(&rules, &mut p), None);
    }

    #[test]
    fn a_target_that_is_not_a_path_is_a_bad_request() {
        let rules = Rules::default();
        let mut p = parts(Method::GET, "*");
        assert_eq!(decide(&rules, &mut p), Some(StatusCode::BAD_REQUEST));
        let mut p = parts(Method::GET, "reviews:9080");
        assert_eq!(decide(&rules, &mut p), Some(StatusCode::BAD_REQUEST));
        // The forms that have no path.
        let mut p = parts(Method::OPTIONS, "*");
        assert_eq!(decide(&rules, &mut p), None);
        let mut p = parts(Method::CONNECT, "reviews:9080");
        assert_eq!(decide(&rules, &mut p), None);
    }

    #[test]
    fn the_request_targets_authority_is_the_host_checked_and_sent() {
        let rules = rules(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-allowed, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: ALLOW
  rules:
  - to: [{operation: {hosts: ["allowed"]}}]
"#,
        );
        let mut p = parts(Method::GET, "http://allowed/");
        p.headers.insert(HOST, HeaderValue::from_static("denied"));
        p.headers.append(HOST, HeaderValue::from_static("other"));
        assert_eq!(decide(&rules, &mut p), None);
        let hosts: Vec<_> = p.headers.get_all(HOST).iter().collect();
        assert_eq!(
            hosts,
            ["allowed"],
            "the backend gets the host that was checked"
        );

        let mut p = parts(Method::GET, "http://denied/");
        p.headers.insert(HOST, HeaderValue::from_static("allowed"));
        assert_eq!(decide(&rules, &mut p), Some(StatusCode::FORBIDDEN));

        // Origin form: the `Host` header is the host; one only.
        let mut p = parts(Method::GET, "/");
        p.headers.insert(HOST, HeaderValue::from_static("allowed"));
        assert_eq!(decide(&rules, &mut p), None);
        p.headers.append(HOST, HeaderValue::from_static("denied"));
        assert_eq!(decide(&rules, &mut p), Some(StatusCode::BAD_REQUEST));
        let mut p = parts(Method::GET, "http://user@allowed/");
        assert_eq!(decide(&rules, &mut p), Some(StatusCode::BAD_REQUEST));
    }
}
