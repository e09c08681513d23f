//! The waypoint's side towards the destinations: a service's endpoints (subsets, load
//! balancing, outlier ejection, circuit breaking) and the HTTP connections to them, each
//! carried over HBONE to the endpoint's pod (or plain TCP to a workload outside the mesh).

mod balance;
mod connections;

pub use balance::{Endpoint, EndpointSet};
pub use connections::{Connections, Io, SendError};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use waypoint_rules::{ConnectionPool, ObjectRef};

/// A DestinationRule's connection-pool limits for one service, as Envoy's circuit breakers:
/// at most `limit` requests in flight, at most `max_pending` more waiting; beyond that the
/// request is refused at once (503, flag `UO`).
struct Breaker {
    in_flight: Arc<Semaphore>,
    waiting: std::sync::atomic::AtomicU32,
    max_pending: u32,
    pool: ConnectionPool,
}

/// Circuit breakers by service.
#[derive(Default)]
pub struct Breakers(Mutex<HashMap<ObjectRef, Arc<Breaker>>>);

/// Istio's thresholds where a DestinationRule sets none: no limit (`MaxUint32`), not
/// Envoy's 1024.
const DEFAULT_MAX_REQUESTS: u32 = u32::MAX;
const DEFAULT_MAX_PENDING: u32 = u32::MAX;

/// Held while a request is in flight to a service.
pub struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Breakers {
    /// Admits a request to `service` under `pool`'s limits, waiting for a slot if the queue
    /// has room. `None`: overflow.
    pub async fn admit(&self, service: &ObjectRef, pool: &ConnectionPool) -> Option<Admission> {
        if pool == &ConnectionPool::default() {
            return Some(Admission { _permit: None });
        }
        let breaker = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let b = map
                .entry(service.clone())
                .or_insert_with(|| new_breaker(pool));
            // A changed DestinationRule starts a new breaker.
            if &b.pool != pool {
                *b = new_breaker(pool);
            }
            b.clone()
        };
        if let Ok(p) = breaker.in_flight.clone().try_acquire_owned() {
            return Some(Admission { _permit: Some(p) });
        }
        use std::sync::atomic::Ordering;
        let queued = breaker.waiting.fetch_add(1, Ordering::AcqRel);
        let result = if queued < breaker.max_pending {
            breaker.in_flight.clone().acquire_owned().await.ok()
        } else {
            None
        };
        breaker.waiting.fetch_sub(1, Ordering::AcqRel);
        result.map(|p| Admission { _permit: Some(p) })
    }
}

fn new_breaker(pool: &ConnectionPool) -> Arc<Breaker> {
    // HTTP/1.1 needs a connection per request in flight, so `maxConnections` caps requests
    // in flight as `http2MaxRequests` does; the smaller wins.
    let limit = [pool.max_connections, pool.max_requests]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(DEFAULT_MAX_REQUESTS)
        .max(1);
    Arc::new(Breaker {
        in_flight: Arc::new(Semaphore::new(limit as usize)),
        waiting: Default::default(),
        max_pending: pool.max_pending_requests.unwrap_or(DEFAULT_MAX_PENDING),
        pool: pool.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_breaker_refuses_beyond_its_queue() {
        let b = Breakers::default();
        let svc = ObjectRef::new("default", "reviews");
        let pool = ConnectionPool {
            max_connections: Some(1),
            max_pending_requests: Some(0),
            ..Default::default()
        };
        let first = b.admit(&svc, &pool).await;
        assert!(first.is_some());
        assert!(
            b.admit(&svc, &pool).await.is_none(),
            "a second request with no queue must overflow"
        );
        drop(first);
        assert!(b.admit(&svc, &pool).await.is_some());
    }
}
