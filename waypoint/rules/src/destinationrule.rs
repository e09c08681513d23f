//! Istio `DestinationRule` (`networking.istio.io/v1`, `v1beta1`, `v1alpha3`): load balancing,
//! connection pool limits, outlier detection and subsets of one service.
//!
//! Accepted and ignored: `exportTo` (visibility is the control plane's business) and
//! `trafficPolicy.tls` with mode `ISTIO_MUTUAL` (the waypoint always reaches endpoints over
//! HBONE with mutual TLS). Refused by name: `workloadSelector`, `portLevelSettings`, `tunnel`,
//! `proxyProtocol`, other TLS modes, `loadBalancer.consistentHash` and the locality settings,
//! subset-level `trafficPolicy`, subset labels other than `version`, and every other field not
//! in the types below.

use crate::build::Translated;
use crate::duration::IstioDuration;
use crate::error::{FieldError, FieldResult};
use crate::fields::service_host;
use crate::load::Context;
use crate::model::{ConnectionPool, LoadBalancer, OutlierDetection, TrafficPolicy};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Spec {
    host: String,
    traffic_policy: Option<TrafficPolicySpec>,
    #[serde(default)]
    subsets: Vec<Subset>,
    #[serde(default, rename = "exportTo")]
    _export_to: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TrafficPolicySpec {
    load_balancer: Option<LoadBalancerSpec>,
    connection_pool: Option<ConnectionPoolSpec>,
    outlier_detection: Option<OutlierSpec>,
    tls: Option<TlsSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadBalancerSpec {
    simple: Option<Simple>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Simple {
    RoundRobin,
    LeastRequest,
    /// Deprecated alias of `LEAST_REQUEST`.
    LeastConn,
    Random,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionPoolSpec {
    tcp: Option<TcpSettings>,
    http: Option<HttpSettings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TcpSettings {
    max_connections: Option<u32>,
    connect_timeout: Option<IstioDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HttpSettings {
    http1_max_pending_requests: Option<u32>,
    http2_max_requests: Option<u32>,
    max_requests_per_connection: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OutlierSpec {
    #[serde(rename = "consecutive5xxErrors")]
    consecutive_5xx_errors: Option<u32>,
    interval: Option<IstioDuration>,
    base_ejection_time: Option<IstioDuration>,
    max_ejection_percent: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSpec {
    mode: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Subset {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(rename = "trafficPolicy")]
    traffic_policy: Option<serde::de::IgnoredAny>,
}

pub(crate) fn translate(spec: Spec, cx: &Context<'_>) -> FieldResult<Option<Translated>> {
    let service = service_host(&spec.host, &cx.object.namespace, "spec.host")?;
    let mut policy = match &spec.traffic_policy {
        Some(t) => traffic_policy(t)?,
        None => TrafficPolicy::default(),
    };
    for (i, subset) in spec.subsets.iter().enumerate() {
        let at = format!("spec.subsets[{i}]");
        if subset.traffic_policy.is_some() {
            return Err(FieldError::unsupported(
                format!("{at}.trafficPolicy"),
                "a subset-level `trafficPolicy` (put it on the DestinationRule)",
            ));
        }
        if let Some(label) = subset.labels.keys().find(|k| *k != "version") {
            return Err(FieldError::new(
                format!("{at}.labels.{label}"),
                format!(
                    "subset label `{label}` is not supported: the waypoint knows only `version` \
                     (a workload's canonical revision)"
                ),
            ));
        }
        if policy
            .subsets
            .insert(subset.name.clone(), subset.labels.clone())
            .is_some()
        {
            return Err(FieldError::new(
                format!("{at}.name"),
                format!("subset `{}` is defined twice", subset.name),
            ));
        }
    }
    Ok(Some(Translated::DestinationRule { service, policy }))
}

fn traffic_policy(t: &TrafficPolicySpec) -> FieldResult<TrafficPolicy> {
    if let Some(tls) = &t.tls
        && tls.mode != "ISTIO_MUTUAL"
    {
        return Err(FieldError::unsupported(
            "spec.trafficPolicy.tls.mode",
            &format!(
                "TLS mode `{}` (the waypoint always uses ISTIO_MUTUAL over HBONE)",
                tls.mode
            ),
        ));
    }
    let load_balancer = match t.load_balancer.as_ref().and_then(|l| l.simple) {
        None => LoadBalancer::default(),
        Some(Simple::RoundRobin) => LoadBalancer::RoundRobin,
        Some(Simple::LeastRequest | Simple::LeastConn) => LoadBalancer::LeastRequest,
        Some(Simple::Random) => LoadBalancer::Random,
    };
    let pool = t.connection_pool.as_ref();
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    // Istio: a limit of 0 is no limit, as an absent one (it takes only values above 0).
    let limit = |v: Option<u32>| v.filter(|v| *v > 0);
    let connection_pool = ConnectionPool {
        max_connections: limit(tcp.and_then(|t| t.max_connections)),
        connect_timeout: tcp.and_then(|t| t.connect_timeout).map(|d| d.0),
        max_pending_requests: limit(http.and_then(|h| h.http1_max_pending_requests)),
        max_requests: limit(http.and_then(|h| h.http2_max_requests)),
        max_requests_per_connection: limit(http.and_then(|h| h.max_requests_per_connection)),
    };
    let outlier = match &t.outlier_detection {
        None => None,
        Some(o) => {
            let max = o.max_ejection_percent.unwrap_or(10);
            if max > 100 {
                return Err(FieldError::new(
                    "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
                    format!("{max} is not a percentage between 0 and 100"),
                ));
            }
            Some(OutlierDetection {
                consecutive_5xx: o.consecutive_5xx_errors.unwrap_or(5),
                interval: o.interval.map_or(Duration::from_secs(10), |d| d.0),
                base_ejection_time: o
                    .base_ejection_time
                    .map_or(Duration::from_secs(30), |d| d.0),
                max_ejection_percent: max,
            })
        }
    };
    Ok(TrafficPolicy {
        load_balancer,
        connection_pool,
        outlier,
        subsets: BTreeMap::new(),
    })
}
