//! Istio's TCP metrics (`istio_tcp_*` with Istio's labels) and the per-connection access log.
//!
//! Every connection gets one [`ConnectionRecord`]: it counts the open at creation, its bytes
//! as they are copied (on the open's series, as Istio's ztunnel counts them, so that a long
//! connection shows in every scrape), and writes the close and the access-log line exactly
//! once, when it is finished or dropped.

use crate::identity::Identity;
use crate::state::{Service, Workload};
use crate::traceparent::TraceId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The labels Istio's ztunnel puts on every `istio_tcp_*` series, in its order.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// The agent's metrics.
#[derive(Default)]
pub struct Metrics {
    registry: Registry,
    opened: Family<ConnectionLabels, Counter>,
    closed: Family<ConnectionLabels, Counter>,
    received: Family<ConnectionLabels, Counter>,
    sent: Family<ConnectionLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics::default();
        let istio = m.registry.sub_registry_with_prefix("istio");
        istio.register(
            "tcp_connections_opened",
            "The total number of TCP connections opened",
            m.opened.clone(),
        );
        istio.register(
            "tcp_connections_closed",
            "The total number of TCP connections closed",
            m.closed.clone(),
        );
        istio.register(
            "tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
            m.received.clone(),
        );
        istio.register(
            "tcp_sent_bytes",
            "The size of total bytes sent during response in case of a TCP connection",
            m.sent.clone(),
        );
        m
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        encode(&self.registry)
    }
}

/// `registry` in Prometheus text exposition (also the waypoint's).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "encoding metrics");
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// What is known about a connection's two ends.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    pub direction: Direction,
    pub src_addr: SocketAddr,
    pub src_workload: Option<Arc<Workload>>,
    /// Set when the source was authenticated by mTLS (inbound) or is us (outbound HBONE).
    pub src_identity: Option<Identity>,
    pub dst_addr: SocketAddr,
    /// The CONNECT authority when the connection went through HBONE.
    pub hbone_addr: Option<SocketAddr>,
    pub dst_workload: Option<Arc<Workload>>,
    pub dst_service: Option<Arc<Service>>,
    pub dst_identity: Option<Identity>,
    pub mtls: bool,
    /// The trace the connection belongs to: sent on CONNECT, adopted from it inbound.
    pub trace_id: TraceId,
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".into()
    } else {
        s.into()
    }
}

fn opt<T>(v: &Option<T>, f: impl Fn(&T) -> String) -> String {
    v.as_ref()
        .map_or_else(|| "unknown".into(), |v| or_unknown(&f(v)))
}

impl ConnectionInfo {
    fn labels(&self, response_flags: &'static str) -> ConnectionLabels {
        let canonical = |w: &Workload| {
            if w.canonical_name.is_empty() {
                w.display_name().to_owned()
            } else {
                w.canonical_name.clone()
            }
        };
        let revision = |w: &Workload| {
            if w.canonical_revision.is_empty() {
                "latest".to_owned()
            } else {
                w.canonical_revision.clone()
            }
        };
        let (sw, dw) = (&self.src_workload, &self.dst_workload);
        ConnectionLabels {
            reporter: match self.direction {
                Direction::Outbound => "source",
                Direction::Inbound => "destination",
            },
            source_workload: opt(sw, |w| w.display_name().to_owned()),
            source_canonical_service: opt(sw, |w| canonical(w)),
            source_canonical_revision: opt(sw, |w| revision(w)),
            source_workload_namespace: opt(sw, |w| w.namespace.clone()),
            source_principal: opt(&self.src_identity, |i| i.to_string()),
            source_app: opt(sw, |w| canonical(w)),
            source_version: opt(sw, |w| revision(w)),
            source_cluster: opt(sw, |w| w.cluster_id.clone()),
            destination_service: opt(&self.dst_service, |s| s.hostname.clone()),
            destination_service_namespace: opt(&self.dst_service, |s| s.namespace.clone()),
            destination_service_name: opt(&self.dst_service, |s| s.name.clone()),
            destination_workload: opt(dw, |w| w.display_name().to_owned()),
            destination_canonical_service: opt(dw, |w| canonical(w)),
            destination_canonical_revision: opt(dw, |w| revision(w)),
            destination_workload_namespace: opt(dw, |w| w.namespace.clone()),
            destination_principal: opt(&self.dst_identity, |i| i.to_string()),
            destination_app: opt(dw, |w| canonical(w)),
            destination_version: opt(dw, |w| revision(w)),
            destination_cluster: opt(dw, |w| w.cluster_id.clone()),
            request_protocol: "tcp",
            response_flags,
            connection_security_policy: if self.mtls { "mutual_tls" } else { "unknown" },
        }
    }
}

/// Byte counters shared with the copy loop.
#[derive(Debug)]
pub struct ByteCounts {
    /// Client to server (the request direction).
    pub request: ByteCount,
    /// Server to client.
    pub response: ByteCount,
}

/// One direction's bytes: the connection's own total (for its access-log line) and the
/// Prometheus series it adds to as it goes.
#[derive(Debug)]
pub struct ByteCount {
    total: AtomicU64,
    series: Counter,
}

impl ByteCount {
    fn new(series: Counter) -> Self {
        Self {
            total: AtomicU64::new(0),
            series,
        }
    }

    pub fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
        self.series.inc_by(n);
    }

    pub fn get(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// How a connection ended, for the close record.
#[derive(Debug)]
pub enum Outcome {
    Ok,
    /// Refused by policy (`response_flags="DENY"`).
    Denied(String),
    /// The upstream could not be reached (`response_flags="CONNECT"`).
    ConnectFailed(String),
    /// Failed otherwise after being established.
    Failed(String),
}

/// One connection's metrics and access-log line; written once.
pub struct ConnectionRecord {
    metrics: Arc<Metrics>,
    info: ConnectionInfo,
    pub bytes: Arc<ByteCounts>,
    start: Instant,
    outcome: Option<Outcome>,
}

impl ConnectionRecord {
    /// Counts the open.
    pub fn open(metrics: Arc<Metrics>, info: ConnectionInfo) -> Self {
        let labels = info.labels("-");
        metrics.opened.get_or_create(&labels).inc();
        let bytes = Arc::new(ByteCounts {
            request: ByteCount::new(metrics.received.get_or_create(&labels).clone()),
            response: ByteCount::new(metrics.sent.get_or_create(&labels).clone()),
        });
        tracing::event!(target: "access", tracing::Level::DEBUG, src.addr = %info.src_addr, dst.addr = %info.dst_addr, direction = info.direction.as_str(), trace_id = %info.trace_id, "connection opened");
        Self {
            metrics,
            info,
            bytes,
            start: Instant::now(),
            outcome: None,
        }
    }

    /// Records how the connection ended; the record is written when dropped.
    pub fn finish(mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }
}

impl Drop for ConnectionRecord {
    fn drop(&mut self) {
        let outcome = self
            .outcome
            .take()
            .unwrap_or_else(|| Outcome::Failed("connection abandoned".into()));
        let (flags, error) = match &outcome {
            Outcome::Ok => ("-", None),
            Outcome::Denied(e) => ("DENY", Some(e.as_str())),
            Outcome::ConnectFailed(e) => ("CONNECT", Some(e.as_str())),
            Outcome::Failed(e) => ("-", Some(e.as_str())),
        };
        let labels = self.info.labels(flags);
        let (request, response) = (self.bytes.request.get(), self.bytes.response.get());
        self.metrics.closed.get_or_create(&labels).inc();

        let i = &self.info;
        let name = |w: &Option<Arc<Workload>>| w.as_ref().map(|w| w.display_name().to_owned());
        let ns = |w: &Option<Arc<Workload>>| w.as_ref().map(|w| w.namespace.clone());
        // From the reporter's side: what it sent to and received from the client.
        let (bytes_sent, bytes_recv) = match i.direction {
            Direction::Outbound => (request, response),
            Direction::Inbound => (response, request),
        };
        let duration = format!("{}ms", self.start.elapsed().as_millis());
        macro_rules! log {
            ($lvl:expr) => {
                tracing::event!(
                    target: "access",
                    $lvl,
                    src.addr = %i.src_addr,
                    src.workload = name(&i.src_workload).as_deref(),
                    src.namespace = ns(&i.src_workload).as_deref(),
                    src.identity = i.src_identity.as_ref().map(|x| x.to_string()).as_deref(),
                    dst.addr = %i.dst_addr,
                    dst.hbone_addr = i.hbone_addr.map(|a| a.to_string()).as_deref(),
                    dst.service = i.dst_service.as_ref().map(|s| s.hostname.as_str()),
                    dst.workload = name(&i.dst_workload).as_deref(),
                    dst.namespace = ns(&i.dst_workload).as_deref(),
                    dst.identity = i.dst_identity.as_ref().map(|x| x.to_string()).as_deref(),
                    direction = i.direction.as_str(),
                    trace_id = %i.trace_id,
                    bytes_sent,
                    bytes_recv,
                    duration = %duration,
                    error,
                    "connection complete"
                )
            };
        }
        if error.is_some() {
            log!(tracing::Level::ERROR);
        } else {
            log!(tracing::Level::INFO);
        }
    }
}
