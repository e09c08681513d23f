//! The one model every rule source is translated into. The proxy reads only this: it never
//! sees an `HTTPRoute` or a `VirtualService`.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A Kubernetes object (Service or Gateway) by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything the waypoint enforces, from all the files of its config folder.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// Route entries per service (HTTPRoute `parentRefs` of kind Service, VirtualService
    /// `hosts`), already in precedence order: the first entry that matches wins.
    pub routes: BTreeMap<ObjectRef, Vec<RouteEntry>>,
    /// Route entries attached to the waypoint Gateway itself (`parentRefs` of kind Gateway
    /// naming this waypoint): used for a service that has no routes of its own.
    pub gateway_routes: Vec<RouteEntry>,
    /// DestinationRule traffic policies per service (`host`).
    pub traffic: BTreeMap<ObjectRef, TrafficPolicy>,
    /// L7 AuthorizationPolicies that target a service or this waypoint (`targetRefs`).
    pub authz: Vec<L7Policy>,
}

/// What a request looks like to matching and authorization.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// The path without the query.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The `:authority` / `Host` the client used.
    pub host: &'a str,
    /// The destination service port the client dialled.
    pub port: u16,
}

/// Who sent the request, from the HBONE tunnel's client certificate.
#[derive(Clone, Copy, Debug)]
pub struct Peer<'a> {
    /// `cluster.local/ns/<ns>/sa/<sa>` (Istio's principal form, without `spiffe://`).
    pub principal: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub ip: std::net::IpAddr,
}

/// One match of one route rule, pointing at its rule.
#[derive(Clone, Debug)]
pub struct RouteEntry {
    pub matcher: RouteMatch,
    pub rule: Arc<RouteRule>,
}

/// All conditions must hold; an empty match matches every request.
#[derive(Clone, Debug, Default)]
pub struct RouteMatch {
    pub path: Option<PathMatch>,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    pub method: Option<Method>,
    /// The service port the client dialled (HTTPRoute `parentRefs[].port`, VirtualService
    /// `match[].port`); `None` matches every port.
    pub port: Option<u16>,
}

#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    /// Gateway API `PathPrefix`: whole path elements (`/foo` matches `/foo` and `/foo/bar`,
    /// not `/foobar`).
    SegmentPrefix(String),
    /// Istio `prefix`: a plain string prefix.
    Prefix(String),
    /// Must match the whole path (the loader compiles patterns anchored, `^(?:...)$`).
    Regex(regex::Regex),
}

#[derive(Clone, Debug)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// Must match the whole value.
    Regex(regex::Regex),
    /// Istio's `headers: {x: {}}`-style presence check.
    Present,
}

#[derive(Clone, Debug)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: StringMatch,
    /// Istio `withoutHeaders`: the request must not match.
    pub invert: bool,
}

#[derive(Clone, Debug)]
pub struct QueryMatch {
    pub name: String,
    pub value: StringMatch,
}

/// What one rule does with a request it matched.
#[derive(Clone, Debug)]
pub struct RouteRule {
    /// Where it came from, for logs: `HTTPRoute default/reviews rules[0]`.
    pub name: String,
    pub action: Action,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rewrite: Option<Rewrite>,
    pub mirrors: Vec<Mirror>,
    pub fault: Option<Fault>,
    /// The whole request, every attempt included (HTTPRoute `timeouts.request`, VS `timeout`).
    pub timeout: Option<Duration>,
    /// Retries; `None` means the rule did not say (the proxy applies Istio's default).
    pub retry: Option<RetryPolicy>,
}

#[derive(Clone, Debug)]
pub enum Action {
    /// Weighted backends (weights may be zero; at least one is positive).
    Forward(Vec<WeightedBackend>),
    Redirect(Redirect),
    /// Answer with this status and an empty body, without forwarding: an HTTPRoute rule with
    /// neither `backendRefs` nor a redirect (500, as Gateway API requires), or a
    /// VirtualService `directResponse`.
    DirectResponse {
        status: u16,
    },
}

#[derive(Clone, Debug)]
pub struct WeightedBackend {
    pub service: ObjectRef,
    /// The service port; `None` keeps the port the client dialled.
    pub port: Option<u16>,
    /// DestinationRule subset name (VirtualService `destination.subset`).
    pub subset: Option<String>,
    pub weight: u32,
    /// What a request sent here gets when the service does not exist: 500 for an HTTPRoute
    /// (the Gateway API's rule for an unresolved `backendRef`), an empty 503 for a
    /// VirtualService (Envoy's `NC`, no such cluster).
    pub unresolved: http::StatusCode,
    /// Why requests may not be sent here at all (a cross-namespace `backendRef` that no
    /// ReferenceGrant permits); they get `unresolved` too.
    pub refused: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

#[derive(Clone, Debug, Default)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathRewrite>,
}

#[derive(Clone, Debug)]
pub enum PathRewrite {
    Full(String),
    /// Replace the matched prefix (the rule's `PathPrefix`) with this, on whole path
    /// elements (Gateway API `ReplacePrefixMatch`).
    Prefix {
        matched: String,
        replacement: String,
    },
    /// Replace the matched prefix (the rule's `prefix`) with this as a plain string, as
    /// Envoy's `prefix_rewrite` does for a VirtualService `rewrite.uri`: prefix `/api`,
    /// rewrite `/`, gives `//users` for `/api/users`, as in Istio.
    Literal {
        matched: String,
        replacement: String,
    },
}

#[derive(Clone, Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathRewrite>,
    pub port: Option<u16>,
    /// The rule's code, else the source's default: 301 for a VirtualService `redirect`, 302
    /// for an HTTPRoute `RequestRedirect`.
    pub status: u16,
}

#[derive(Clone, Debug)]
pub struct Mirror {
    pub service: ObjectRef,
    pub port: Option<u16>,
    /// 0..=100.
    pub percent: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Fault {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
}

#[derive(Clone, Debug)]
pub struct Delay {
    pub fixed: Duration,
    /// 0..=100 (Istio's `percentage.value`; 100 when not given).
    pub percent: f64,
}

#[derive(Clone, Debug)]
pub struct Abort {
    pub status: u16,
    pub percent: f64,
}

/// Envoy's retry policy.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (Istio `attempts`, Gateway API `attempts`).
    pub attempts: u32,
    /// Each attempt's limit (VS `perTryTimeout`, HTTPRoute `timeouts.backendRequest`).
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
    /// Base interval of the fully jittered exponential backoff (Envoy: 25 ms).
    pub backoff_base: Duration,
    /// Cap of the backoff (Envoy: 10 x base, 250 ms by default).
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// Envoy's default backoff base interval.
    pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);

    /// What Istio applies to a route that says nothing about retries: 2 retries on
    /// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with 503
    /// (the gRPC conditions `unavailable` and `cancelled` are not modelled).
    pub fn istio_default() -> Self {
        Self {
            attempts: 2,
            per_try_timeout: None,
            on: RetryOn {
                connect_failure: true,
                refused_stream: true,
                status_codes: vec![503],
                ..RetryOn::default()
            },
            backoff_base: Self::DEFAULT_BACKOFF_BASE,
            backoff_max: Self::DEFAULT_BACKOFF_BASE * 10,
        }
    }
}

/// Envoy's `retry_on` conditions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, a reset, or a connect failure.
    pub five_xx: bool,
    /// `gateway-error`: 502, 503, 504.
    pub gateway_error: bool,
    /// `reset`: no response (reset, disconnect, per-try timeout).
    pub reset: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `refused-stream`: HTTP/2 REFUSED_STREAM.
    pub refused_stream: bool,
    /// `retriable-status-codes` plus bare codes: these statuses.
    pub status_codes: Vec<u16>,
}

/// DestinationRule `trafficPolicy` (and its subsets).
#[derive(Clone, Debug, Default)]
pub struct TrafficPolicy {
    pub load_balancer: LoadBalancer,
    pub connection_pool: ConnectionPool,
    pub outlier: Option<OutlierDetection>,
    /// Subset name to labels. Workloads carry no labels in Istio's local file: the label
    /// `version` is matched against the workload's `canonicalRevision` (Istio derives it from
    /// that label); other labels are refused at load time.
    pub subsets: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadBalancer {
    RoundRobin,
    /// Istio's default: the fewer of two random endpoints' outstanding requests.
    #[default]
    LeastRequest,
    Random,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionPool {
    /// `tcp.maxConnections`: connections per endpoint... per service, as Envoy counts them.
    pub max_connections: Option<u32>,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub max_pending_requests: Option<u32>,
    /// `http.http2MaxRequests`: requests in flight.
    pub max_requests: Option<u32>,
    /// `http.maxRequestsPerConnection`.
    pub max_requests_per_connection: Option<u32>,
    /// `tcp.connectTimeout`: the limit on opening a connection to an endpoint (Istio: 10 s
    /// when not given).
    pub connect_timeout: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    /// `consecutive5xxErrors` (Istio default 5).
    pub consecutive_5xx: u32,
    /// `interval` (10 s).
    pub interval: Duration,
    /// `baseEjectionTime` (30 s), multiplied by the number of times ejected.
    pub base_ejection_time: Duration,
    /// `maxEjectionPercent` (10).
    pub max_ejection_percent: u32,
}

/// An Istio AuthorizationPolicy as the waypoint enforces it.
#[derive(Clone, Debug)]
pub struct L7Policy {
    pub namespace: String,
    pub name: String,
    pub action: AuthzAction,
    /// `None`: the policy targets the waypoint Gateway (all its traffic); else these services.
    pub services: Option<Vec<ObjectRef>>,
    /// An ALLOW policy with no rules allows nothing; a rule with no `from` and no `to`
    /// matches every request.
    pub rules: Vec<AuthzRule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthzAction {
    Allow,
    Deny,
}

/// Istio's `rules[]`: every non-empty part must match. `from` and `to` match if any of their
/// entries does.
#[derive(Clone, Debug, Default)]
pub struct AuthzRule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
}

#[derive(Clone, Debug, Default)]
pub struct Source {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    /// Parsed at load time: a single address is a /32 (or /128).
    pub ip_blocks: Vec<ipnet::IpNet>,
    pub not_ip_blocks: Vec<ipnet::IpNet>,
}

#[derive(Clone, Debug, Default)]
pub struct Operation {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    /// Istio's path forms: exact, `prefix*`, `*suffix`, `*`.
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}
