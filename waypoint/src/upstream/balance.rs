//! Choosing an endpoint: a service's healthy endpoints (narrowed to a subset), minus those
//! that outlier detection has ejected, by the DestinationRule's load balancer.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use waypoint_rules::{LoadBalancer, OutlierDetection};
use ztunnel::state::{Service, State, Workload};

/// What the waypoint remembers of one endpoint across requests.
#[derive(Debug, Default)]
struct Stats {
    in_flight: AtomicU32,
    outlier: Mutex<Outlier>,
}

#[derive(Debug, Default)]
struct Outlier {
    consecutive_5xx: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

impl Stats {
    fn ejected(&self, now: Instant) -> bool {
        let o = self.outlier.lock().unwrap_or_else(|p| p.into_inner());
        o.ejected_until.is_some_and(|t| t > now)
    }
}

/// One endpoint to send to.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    /// The pod IP and target port.
    pub addr: SocketAddr,
    stats: Arc<Stats>,
}

/// Counts a request against its endpoint while it lasts (least-request balancing).
pub struct InFlight(Arc<Stats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoint {
    pub fn start(&self) -> InFlight {
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.stats.clone())
    }
}

/// Endpoint statistics and balancer state, kept across requests and rule changes.
#[derive(Default)]
pub struct EndpointSet {
    stats: Mutex<HashMap<SocketAddr, Arc<Stats>>>,
    round_robin: AtomicUsize,
}

impl EndpointSet {
    /// The endpoints of `svc` for its port `port`, narrowed to `subset`'s labels (`version`
    /// matched against the workload's canonical revision).
    pub fn candidates(
        &self,
        state: &State,
        svc: &Service,
        port: u16,
        subset: Option<&BTreeMap<String, String>>,
    ) -> Vec<Endpoint> {
        let like = svc
            .vips
            .first()
            .map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |v| {
                v.address
            });
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        state
            .endpoints(svc, port, like)
            .into_iter()
            .filter(|(w, _)| {
                subset.is_none_or(|labels| {
                    labels
                        .get("version")
                        .is_none_or(|v| &w.canonical_revision == v)
                })
            })
            .map(|(workload, addr)| Endpoint {
                stats: stats.entry(addr).or_default().clone(),
                workload,
                addr,
            })
            .collect()
    }

    /// A workload addressed directly (a waypoint for workloads), as an endpoint.
    pub fn workload(&self, workload: Arc<Workload>, addr: SocketAddr) -> Endpoint {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        Endpoint {
            stats: stats.entry(addr).or_default().clone(),
            workload,
            addr,
        }
    }

    /// Picks one of `candidates`, never an ejected one, and for a retry not one already tried
    /// (unless nothing else is left). `None` when every endpoint is ejected: Istio sets
    /// Envoy's panic threshold to 0 with outlier detection, so that is 503 `UH`.
    pub fn pick(
        &self,
        candidates: &[Endpoint],
        lb: LoadBalancer,
        tried: &[SocketAddr],
    ) -> Option<Endpoint> {
        let now = Instant::now();
        let healthy: Vec<&Endpoint> = candidates
            .iter()
            .filter(|e| !e.stats.ejected(now))
            .collect();
        if healthy.is_empty() {
            return None;
        }
        let pool = healthy;
        let fresh: Vec<&Endpoint> = pool
            .iter()
            .copied()
            .filter(|e| !tried.contains(&e.addr))
            .collect();
        let pool = if fresh.is_empty() { pool } else { fresh };
        let n = pool.len();
        if n == 0 {
            return None;
        }
        let chosen = match lb {
            LoadBalancer::RoundRobin => pool[self.round_robin.fetch_add(1, Ordering::Relaxed) % n],
            LoadBalancer::Random => pool[fastrand::usize(..n)],
            // Envoy's least request: the less loaded of two picked at random.
            LoadBalancer::LeastRequest => {
                let a = pool[fastrand::usize(..n)];
                let b = pool[fastrand::usize(..n)];
                if b.stats.in_flight.load(Ordering::Relaxed)
                    < a.stats.in_flight.load(Ordering::Relaxed)
                {
                    b
                } else {
                    a
                }
            }
        };
        Some(chosen.clone())
    }

    /// Records an attempt's outcome for outlier detection: `failed` is a 5xx or no response.
    /// Ejects the endpoint after `consecutive_5xx` failures in a row, for
    /// `base_ejection_time` times the number of its ejections (less one for each `interval`
    /// it has since spent not ejected), capped (see
    /// [`ejection_time`]), unless that would eject more than `max_ejection_percent` of
    /// `candidates`, counting this one (as Envoy: with the default 10 %, fewer than ten
    /// endpoints eject none). `consecutive5xxErrors: 0` turns it off, as in Istio.
    pub fn report(
        &self,
        ep: &Endpoint,
        failed: bool,
        detection: Option<&OutlierDetection>,
        candidates: &[Endpoint],
    ) {
        let Some(d) = detection.filter(|d| d.consecutive_5xx > 0) else {
            return;
        };
        let now = Instant::now();
        let ejected = candidates.iter().filter(|e| e.stats.ejected(now)).count();
        let mut o = ep.stats.outlier.lock().unwrap_or_else(|p| p.into_inner());
        if !failed {
            o.consecutive_5xx = 0;
            return;
        }
        o.consecutive_5xx += 1;
        let allowed = (ejected + 1) * 100 <= candidates.len() * d.max_ejection_percent as usize;
        if o.consecutive_5xx >= d.consecutive_5xx
            && o.ejected_until.is_none_or(|t| t <= now)
            && allowed
        {
            o.consecutive_5xx = 0;
            // Envoy lowers the ejection multiplier by one at each interval that finds the
            // endpoint not ejected: an endpoint healthy for long starts again from the base.
            if let Some(until) = o.ejected_until
                && !d.interval.is_zero()
            {
                let healthy = now.saturating_duration_since(until);
                let intervals = healthy.as_nanos() / d.interval.as_nanos();
                o.times_ejected = o
                    .times_ejected
                    .saturating_sub(u32::try_from(intervals).unwrap_or(u32::MAX));
            }
            let (times, ejection) = ejection_time(d.base_ejection_time, o.times_ejected);
            o.times_ejected = times;
            // Checked: an ejection no `Instant` can hold is skipped rather than a panic.
            o.ejected_until = Some(now.checked_add(ejection).unwrap_or(now));
            tracing::info!(endpoint = %ep.addr, for_ = ?ejection, "outlier detection: endpoint ejected");
        }
    }
}

/// Envoy's default `max_ejection_time`.
const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// The ejection count after one more ejection of an endpoint ejected `times` times already,
/// and how long it lasts: `base` times that count, at most `max(base, 300s)` as in Envoy. The
/// count stops growing once it reaches the cap, so neither it nor the product can overflow.
fn ejection_time(base: Duration, times: u32) -> (u32, Duration) {
    let cap = base.max(MAX_EJECTION_TIME);
    let times = if base.saturating_mul(times) >= cap {
        times
    } else {
        times.saturating_add(1)
    };
    (times, base.saturating_mul(times).min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(set: &EndpointSet, n: u8) -> Vec<Endpoint> {
        let mut stats = set.stats.lock().unwrap();
        (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([10, 0, 0, i + 1], 8080));
                Endpoint {
                    workload: Arc::new(test_workload(i)),
                    addr,
                    stats: stats.entry(addr).or_default().clone(),
                }
            })
            .collect()
    }

    fn test_workload(i: u8) -> Workload {
        crate::testing::workload(&format!(
            "workloads:\n- name: w{i}\n  namespace: default\n  workloadIps: [\"10.0.0.{}\"]\n",
            i + 1
        ))
        .as_ref()
        .clone()
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let set = EndpointSet::default();
        let eps = endpoints(&set, 3);
        let picked: Vec<_> = (0..6)
            .map(|_| set.pick(&eps, LoadBalancer::RoundRobin, &[]).unwrap().addr)
            .collect();
        assert_eq!(picked[0..3], picked[3..6]);
        let mut first: Vec<_> = picked[0..3].to_vec();
        first.sort();
        first.dedup();
        assert_eq!(first.len(), 3);
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let set = EndpointSet::default();
        let eps = endpoints(&set, 2);
        let _busy: Vec<_> = (0..5).map(|_| eps[0].start()).collect();
        let idle = (0..200)
            .filter(|_| {
                set.pick(&eps, LoadBalancer::LeastRequest, &[])
                    .unwrap()
                    .addr
                    == eps[1].addr
            })
            .count();
        // P2C picks the busy one only when both draws hit it: about a quarter of the time.
        assert!(idle > 120, "idle endpoint chosen {idle}/200 times");
    }

    #[test]
    fn a_retry_avoids_the_endpoint_already_tried() {
        let set = EndpointSet::default();
        let eps = endpoints(&set, 2);
        for _ in 0..20 {
            let e = set
                .pick(&eps, LoadBalancer::Random, &[eps[0].addr])
                .unwrap();
            assert_eq!(e.addr, eps[1].addr);
        }
    }

    /// Envoy's rule: this ejection must keep the ejected share within the maximum, so with
    /// Istio's default 10 % two endpoints eject none; 0 errors turns detection off; with
    /// every endpoint ejected nothing is picked (503 `UH`), none is used anyway.
    #[test]
    fn ejection_follows_envoys_limits() {
        let detection = |consecutive_5xx, max_ejection_percent| OutlierDetection {
            consecutive_5xx,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent,
        };
        for d in [detection(1, 10), detection(0, 100)] {
            let set = EndpointSet::default();
            let eps = endpoints(&set, 2);
            for _ in 0..5 {
                set.report(&eps[0], true, Some(&d), &eps);
            }
            assert!(!eps[0].stats.ejected(Instant::now()), "{d:?}");
        }
        let set = EndpointSet::default();
        let eps = endpoints(&set, 1);
        set.report(&eps[0], true, Some(&detection(1, 100)), &eps);
        assert!(eps[0].stats.ejected(Instant::now()));
        assert!(set.pick(&eps, LoadBalancer::RoundRobin, &[]).is_none());
    }

    #[test]
    fn consecutive_errors_eject_an_endpoint_within_the_percentage() {
        let set = EndpointSet::default();
        let eps = endpoints(&set, 2);
        let d = OutlierDetection {
            consecutive_5xx: 2,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 50,
        };
        set.report(&eps[0], true, Some(&d), &eps);
        assert!(
            !eps[0].stats.ejected(Instant::now()),
            "one error is not enough"
        );
        set.report(&eps[0], true, Some(&d), &eps);
        assert!(eps[0].stats.ejected(Instant::now()));
        for _ in 0..20 {
            assert_eq!(
                set.pick(&eps, LoadBalancer::Random, &[]).unwrap().addr,
                eps[1].addr
            );
        }
        // 50% of two endpoints: the second may not be ejected as well.
        set.report(&eps[1], true, Some(&d), &eps);
        set.report(&eps[1], true, Some(&d), &eps);
        assert!(!eps[1].stats.ejected(Instant::now()));
    }

    #[test]
    fn time_spent_healthy_lowers_the_next_ejection() {
        let set = EndpointSet::default();
        let eps = endpoints(&set, 1);
        let d = OutlierDetection {
            consecutive_5xx: 1,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 100,
        };
        let ejected_for = |ep: &Endpoint| {
            let o = ep.stats.outlier.lock().unwrap();
            o.ejected_until.unwrap() - Instant::now()
        };
        // Ejected three times before, the last ejection over 25 s ago: two intervals healthy,
        // so this ejection counts as the second (60 s), not the fourth (120 s).
        {
            let mut o = eps[0].stats.outlier.lock().unwrap();
            o.times_ejected = 3;
            o.ejected_until = Some(Instant::now() - Duration::from_secs(25));
        }
        set.report(&eps[0], true, Some(&d), &eps);
        let t = ejected_for(&eps[0]);
        assert!(
            t > Duration::from_secs(55) && t <= Duration::from_secs(60),
            "{t:?}"
        );
        // Ejected again right after this one ends: no interval healthy, the multiplier grows.
        {
            let mut o = eps[0].stats.outlier.lock().unwrap();
            o.ejected_until = Some(Instant::now());
        }
        set.report(&eps[0], true, Some(&d), &eps);
        let t = ejected_for(&eps[0]);
        assert!(
            t > Duration::from_secs(85) && t <= Duration::from_secs(90),
            "{t:?}"
        );
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_up_to_envoys_cap() {
        let s = Duration::from_secs;
        assert_eq!(ejection_time(s(30), 0), (1, s(30)));
        assert_eq!(ejection_time(s(30), 1), (2, s(60)));
        assert_eq!(ejection_time(s(30), 9), (10, s(300)));
        assert_eq!(
            ejection_time(s(30), 10),
            (10, s(300)),
            "the count stops at the cap"
        );
        assert_eq!(ejection_time(s(7), 42), (43, s(300)), "capped at 300s");
        assert_eq!(ejection_time(s(7), 43), (43, s(300)));
        // A base above 300s is the cap itself.
        assert_eq!(ejection_time(s(900), 0), (1, s(900)));
        assert_eq!(ejection_time(s(900), 1), (1, s(900)));
        assert_eq!(
            ejection_time(Duration::MAX, u32::MAX),
            (u32::MAX, Duration::MAX)
        );
        assert_eq!(
            ejection_time(Duration::ZERO, u32::MAX),
            (u32::MAX, Duration::ZERO)
        );
    }

    #[test]
    fn repeated_ejections_are_capped_and_huge_times_do_not_panic() {
        let set = EndpointSet::default();
        let eps = endpoints(&set, 1);
        let eject_again = |base: Duration| {
            let d = OutlierDetection {
                consecutive_5xx: 1,
                interval: Duration::from_secs(10),
                base_ejection_time: base,
                max_ejection_percent: 100,
            };
            eps[0].stats.outlier.lock().unwrap().ejected_until = None;
            set.report(&eps[0], true, Some(&d), &eps);
            eps[0].stats.outlier.lock().unwrap().ejected_until
        };
        for _ in 0..50 {
            let until = eject_again(Duration::from_secs(100)).expect("ejected");
            assert!(until <= Instant::now() + Duration::from_secs(300));
        }
        assert_eq!(eps[0].stats.outlier.lock().unwrap().times_ejected, 3);
        // No `Instant` holds this ejection: it is skipped, not a panic.
        let until = eject_again(Duration::MAX).expect("reported");
        assert!(until <= Instant::now());
    }
}
