//! Istio's request metrics as a waypoint reports them (`reporter="waypoint"`), Envoy's
//! per-cluster request and retry counters, and the access log: one [`RequestRecord`] per
//! request, written exactly once, when the response has been sent (or abandoned).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use ztunnel::identity::Identity;
use ztunnel::state::{Service, Workload};

/// Istio's labels on `istio_requests_total` and the request histograms, in its order.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_code: String,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: &'static str,
}

/// Envoy's cluster label: `outbound|<port>|<subset>|<host>`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster_name: String,
}

/// Istio's duration buckets, in milliseconds.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS.iter().copied())
}

/// Istio's size buckets: powers of ten from 1 byte.
fn bytes_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 10.0, 9,
    ))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    /// The cluster named in labels when a workload does not say.
    cluster_id: String,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<RequestLabels>,
    request_bytes: HistogramFamily<RequestLabels>,
    response_bytes: HistogramFamily<RequestLabels>,
    upstream_rq: Family<ClusterLabels, Counter>,
    upstream_retry: Family<ClusterLabels, Counter>,
    label_sets: Mutex<LabelSets>,
}

impl Metrics {
    pub fn new(cluster_id: &str) -> Self {
        let mut m = Metrics {
            cluster_id: cluster_id.to_owned(),
            registry: Registry::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::new_with_constructor(bytes_histogram),
            response_bytes: Family::new_with_constructor(bytes_histogram),
            upstream_rq: Family::default(),
            upstream_retry: Family::default(),
            label_sets: Mutex::default(),
        };
        let istio = m.registry.sub_registry_with_prefix("istio");
        istio.register("requests", "Total requests", m.requests.clone());
        istio.register(
            "request_duration_milliseconds",
            "Request duration in milliseconds",
            m.duration.clone(),
        );
        istio.register(
            "request_bytes",
            "Request body sizes",
            m.request_bytes.clone(),
        );
        istio.register(
            "response_bytes",
            "Response body sizes",
            m.response_bytes.clone(),
        );
        let envoy = m.registry.sub_registry_with_prefix("envoy_cluster");
        envoy.register(
            "upstream_rq",
            "Requests sent to the cluster's endpoints, every attempt counted",
            m.upstream_rq.clone(),
        );
        envoy.register(
            "upstream_rq_retry",
            "Retried requests (attempts after the first)",
            m.upstream_retry.clone(),
        );
        m
    }

    pub fn encode(&self) -> String {
        ztunnel::metrics::encode(&self.registry)
    }

    /// One attempt sent to `cluster`; `retry` when it is not the first.
    pub fn attempt(&self, cluster: &str, retry: bool) {
        let l = ClusterLabels {
            cluster_name: cluster.to_owned(),
        };
        self.upstream_rq.get_or_create(&l).inc();
        if retry {
            self.upstream_retry.get_or_create(&l).inc();
        }
    }

    /// The metrics of `info`'s label set, made on first use.
    fn of(&self, info: &RequestInfo) -> Arc<LabelSet> {
        let hash = info.label_hash();
        let mut sets = self
            .label_sets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(set) = sets.find(hash, info) {
            return set;
        }
        let labels = info.labels(&self.cluster_id);
        let set = Arc::new(LabelSet {
            requests: self.requests.get_or_create(&labels).clone(),
            duration: self.duration.get_or_create(&labels).clone(),
            request_bytes: self.request_bytes.get_or_create(&labels).clone(),
            response_bytes: self.response_bytes.get_or_create(&labels).clone(),
            key: LabelKey::of(info),
            labels,
        });
        sets.insert(hash, set.clone());
        set
    }
}

/// The most label sets remembered; past that the memory starts afresh (the families keep
/// their series), so that workloads replaced by a config change are let go.
const MAX_LABEL_SETS: usize = 1024;

/// Label sets by what they are made from, so that a request finds its four series by hashing
/// a few words, not by building 25 label strings and hashing them four times (5 % of a
/// waypoint's CPU at 1000 requests/s).
#[derive(Default)]
struct LabelSets {
    by_hash: HashMap<u64, Vec<Arc<LabelSet>>>,
    len: usize,
}

impl LabelSets {
    fn find(&self, hash: u64, info: &RequestInfo) -> Option<Arc<LabelSet>> {
        let sets = self.by_hash.get(&hash)?;
        sets.iter().find(|s| s.key.matches(info)).cloned()
    }

    fn insert(&mut self, hash: u64, set: Arc<LabelSet>) {
        if self.len >= MAX_LABEL_SETS {
            self.by_hash.clear();
            self.len = 0;
        }
        self.by_hash.entry(hash).or_default().push(set);
        self.len += 1;
    }
}

/// One label set's series, and its labels for the access log.
struct LabelSet {
    key: LabelKey,
    labels: RequestLabels,
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// What a label set is made from. Workloads and services are compared as the state's
/// entries (`Arc`s): an entry replaced by a config change is a new label set, with its new
/// labels.
struct LabelKey {
    src_identity: Option<Identity>,
    src_workload: Option<Arc<Workload>>,
    dst_workload: Option<Arc<Workload>>,
    dst_service: Option<Arc<Service>>,
    grpc: bool,
    status: u16,
    flags: Vec<&'static str>,
}

fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn address<T>(a: &Option<Arc<T>>) -> usize {
    a.as_ref().map_or(0, |a| Arc::as_ptr(a) as usize)
}

impl LabelKey {
    fn of(i: &RequestInfo) -> Self {
        Self {
            src_identity: i.src_identity.clone(),
            src_workload: i.src_workload.clone(),
            dst_workload: i.dst_workload.clone(),
            dst_service: i.dst_service.clone(),
            grpc: i.grpc,
            status: i.status,
            flags: i.flags.clone(),
        }
    }

    fn matches(&self, i: &RequestInfo) -> bool {
        self.status == i.status
            && self.grpc == i.grpc
            && self.flags == i.flags
            && same(&self.src_workload, &i.src_workload)
            && same(&self.dst_workload, &i.dst_workload)
            && same(&self.dst_service, &i.dst_service)
            && self.src_identity == i.src_identity
    }
}

/// What is known about one request; filled in as it is served.
#[derive(Clone, Debug, Default)]
pub struct RequestInfo {
    pub src_addr: Option<SocketAddr>,
    pub src_identity: Option<Identity>,
    pub src_workload: Option<Arc<Workload>>,
    pub dst_service: Option<Arc<Service>>,
    pub dst_workload: Option<Arc<Workload>>,
    pub dst_addr: Option<SocketAddr>,
    pub grpc: bool,
    pub method: String,
    pub path: String,
    pub authority: String,
    pub route: String,
    pub status: u16,
    /// Envoy's response flags (`UF`, `UT`, `URX`, `FI`, `DI`, `NR`, `UO`, `UH`, `UC`, `SI`,
    /// `NC`, ...), or `-`.
    pub flags: Vec<&'static str>,
    pub attempts: u32,
    pub request_bytes: u64,
    /// Why the waypoint answered itself, for the access log.
    pub detail: Option<String>,
}

/// The response flags in the order Envoy prints them (so that `UF,URX` is one label value
/// whatever happened first); flags not listed go last.
const FLAG_ORDER: [&str; 15] = [
    "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "DC", "URX", "SI", "UPE", "NC",
];

impl RequestInfo {
    /// Adds the response flag `f`, keeping Envoy's order.
    pub fn flag(&mut self, f: &'static str) {
        if self.flags.contains(&f) {
            return;
        }
        let rank = |f: &str| {
            FLAG_ORDER
                .iter()
                .position(|o| *o == f)
                .unwrap_or(FLAG_ORDER.len())
        };
        let at = self
            .flags
            .iter()
            .position(|g| rank(g) > rank(f))
            .unwrap_or(self.flags.len());
        self.flags.insert(at, f);
    }

    fn flags(&self) -> String {
        if self.flags.is_empty() {
            "-".into()
        } else {
            self.flags.join(",")
        }
    }
}

/// Writes a request's metrics and access-log line once, when dropped.
pub struct RequestRecord {
    metrics: Arc<Metrics>,
    pub info: RequestInfo,
    start: Instant,
    pub response_bytes: Arc<AtomicU64>,
}

impl RequestRecord {
    pub fn new(metrics: Arc<Metrics>, info: RequestInfo) -> Self {
        Self {
            metrics,
            info,
            start: Instant::now(),
            response_bytes: Default::default(),
        }
    }
}

impl RequestInfo {
    /// The hash of what [`LabelKey`] compares.
    fn label_hash(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.src_identity.hash(&mut h);
        address(&self.src_workload).hash(&mut h);
        address(&self.dst_workload).hash(&mut h);
        address(&self.dst_service).hash(&mut h);
        (self.grpc, self.status, &self.flags).hash(&mut h);
        h.finish()
    }

    fn labels(&self, cluster_id: &str) -> RequestLabels {
        let i = self;
        let name = |w: &Option<Arc<Workload>>| {
            w.as_ref()
                .map_or("unknown".into(), |w| w.display_name().to_owned())
        };
        let ns = |w: &Option<Arc<Workload>>| {
            w.as_ref().map_or("unknown".into(), |w| w.namespace.clone())
        };
        let canonical = |w: &Option<Arc<Workload>>| {
            w.as_ref().map_or("unknown".into(), |w| {
                if w.canonical_name.is_empty() {
                    w.display_name().to_owned()
                } else {
                    w.canonical_name.clone()
                }
            })
        };
        let revision = |w: &Option<Arc<Workload>>| {
            w.as_ref().map_or("unknown".into(), |w| {
                if w.canonical_revision.is_empty() {
                    "latest".into()
                } else {
                    w.canonical_revision.clone()
                }
            })
        };
        let cluster = |w: &Option<Arc<Workload>>| {
            w.as_ref()
                .map_or(cluster_id.to_owned(), |w| w.cluster_id.clone())
        };
        let dst_principal = i
            .dst_workload
            .as_ref()
            .map_or("unknown".into(), |w| w.identity().to_string());
        RequestLabels {
            reporter: "waypoint",
            source_workload: name(&i.src_workload),
            source_canonical_service: canonical(&i.src_workload),
            source_canonical_revision: revision(&i.src_workload),
            source_workload_namespace: i
                .src_identity
                .as_ref()
                .map_or_else(|| ns(&i.src_workload), |id| id.namespace.clone()),
            source_principal: i
                .src_identity
                .as_ref()
                .map_or("unknown".into(), |id| id.to_string()),
            source_app: canonical(&i.src_workload),
            source_version: revision(&i.src_workload),
            source_cluster: cluster(&i.src_workload),
            destination_workload: name(&i.dst_workload),
            destination_workload_namespace: ns(&i.dst_workload),
            destination_principal: dst_principal,
            destination_app: canonical(&i.dst_workload),
            destination_version: revision(&i.dst_workload),
            destination_service: i
                .dst_service
                .as_ref()
                .map_or("unknown".into(), |s| s.hostname.clone()),
            destination_canonical_service: canonical(&i.dst_workload),
            destination_canonical_revision: revision(&i.dst_workload),
            destination_service_name: i
                .dst_service
                .as_ref()
                .map_or("unknown".into(), |s| s.name.clone()),
            destination_service_namespace: i
                .dst_service
                .as_ref()
                .map_or("unknown".into(), |s| s.namespace.clone()),
            destination_cluster: cluster(&i.dst_workload),
            request_protocol: if i.grpc { "grpc" } else { "http" },
            response_code: i.status.to_string(),
            grpc_response_status: String::new(),
            response_flags: i.flags(),
            connection_security_policy: "mutual_tls",
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let set = self.metrics.of(&self.info);
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let sent = self.response_bytes.load(Ordering::Relaxed);
        set.requests.inc();
        set.duration.observe(ms);
        set.request_bytes.observe(self.info.request_bytes as f64);
        set.response_bytes.observe(sent as f64);
        let (i, labels) = (&self.info, &set.labels);
        tracing::event!(
            target: "access",
            tracing::Level::INFO,
            src.addr = %OrDash(i.src_addr),
            src.identity = %labels.source_principal,
            dst.service = %labels.destination_service,
            dst.workload = %labels.destination_workload,
            dst.addr = %OrDash(i.dst_addr),
            method = %i.method,
            path = %i.path,
            authority = %i.authority,
            route = %i.route,
            status = i.status,
            flags = %labels.response_flags,
            attempts = i.attempts,
            duration_ms = format_args!("{ms:.1}"),
            bytes_received = i.request_bytes,
            bytes_sent = sent,
            detail = i.detail.as_deref().unwrap_or("-"),
            "request"
        );
    }
}

/// Shows a value, or `-` when there is none (as access logs do), not `Some(..)`.
struct OrDash<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(revision: &str) -> Arc<Workload> {
        crate::testing::workload(&format!(
            "workloads:\n- name: reviews-v\n  namespace: default\n  canonicalName: reviews\n  canonicalRevision: {revision}\n  workloadIps: [\"10.0.0.9\"]\n"
        ))
    }

    /// `istio_requests_total` by the label values its series contains.
    fn count(m: &Metrics, with: &[&str]) -> u64 {
        m.encode()
            .lines()
            .filter(|l| {
                l.starts_with("istio_requests_total{") && with.iter().all(|w| l.contains(w))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    #[test]
    fn response_flags_are_in_envoys_order_whatever_came_first() {
        let mut info = RequestInfo::default();
        for f in ["URX", "UF", "URX", "DI"] {
            info.flag(f);
        }
        assert_eq!(info.flags(), "UF,DI,URX");
        assert_eq!(RequestInfo::default().flags(), "-");
    }

    #[test]
    fn requests_count_into_their_label_sets_and_a_replaced_workload_gets_its_new_labels() {
        let m = Arc::new(Metrics::new("Kubernetes"));
        let request = |dst: &Arc<Workload>, status: u16, flag: Option<&'static str>| {
            let mut info = RequestInfo {
                src_identity: Some(
                    "spiffe://cluster.local/ns/default/sa/client"
                        .parse()
                        .unwrap(),
                ),
                dst_workload: Some(dst.clone()),
                status,
                ..Default::default()
            };
            if let Some(f) = flag {
                info.flag(f);
            }
            drop(RequestRecord::new(m.clone(), info));
        };
        let v1 = workload("v1");
        request(&v1, 200, None);
        request(&v1, 200, None);
        request(&v1, 503, Some("UF"));
        // The same workload after a config change, now at v2: a new entry, new labels.
        let v2 = workload("v2");
        request(&v2, 200, None);

        let ok = r#"response_code="200""#;
        assert_eq!(count(&m, &[r#"destination_version="v1""#, ok]), 2);
        assert_eq!(
            count(
                &m,
                &[
                    r#"destination_version="v1""#,
                    r#"response_code="503""#,
                    r#"response_flags="UF""#
                ]
            ),
            1
        );
        assert_eq!(count(&m, &[r#"destination_version="v2""#, ok]), 1);
        assert_eq!(
            count(
                &m,
                &[r#"source_principal="spiffe://cluster.local/ns/default/sa/client""#]
            ),
            4
        );
    }
}
