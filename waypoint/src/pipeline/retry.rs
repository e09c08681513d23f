//! Envoy's retry semantics: which outcomes a policy retries, and the fully jittered
//! exponential backoff between attempts.

use std::time::Duration;
use waypoint_rules::{RetryOn, RetryPolicy};

/// How one attempt ended.
#[derive(Debug)]
pub enum Attempt {
    /// A response head arrived with this status.
    Status(u16),
    /// No connection could be made.
    ConnectFailure,
    /// The connection failed after the request was sent.
    Reset,
    /// HTTP/2 REFUSED_STREAM.
    Refused,
    /// The attempt's own timeout fired.
    PerTryTimeout,
}

/// Whether `on` retries an attempt that ended as `a`.
pub fn retriable(on: &RetryOn, a: &Attempt) -> bool {
    match *a {
        Attempt::Status(s) => {
            (on.five_xx && s >= 500)
                || (on.gateway_error && matches!(s, 502..=504))
                || (on.retriable_4xx && s == 409)
                || on.status_codes.contains(&s)
        }
        Attempt::ConnectFailure => on.connect_failure || on.five_xx || on.gateway_error,
        Attempt::Reset => on.reset || on.five_xx || on.gateway_error,
        Attempt::Refused => on.refused_stream || on.reset || on.five_xx,
        Attempt::PerTryTimeout => on.five_xx || on.gateway_error || on.reset,
    }
}

/// The wait before retry number `n` (1 for the first retry): uniformly random in
/// `[0, (2^n - 1) x base]`, capped at `max` (Envoy's fully jittered backoff).
pub fn backoff(policy: &RetryPolicy, n: u32) -> Duration {
    let factor = (1u64 << n.min(20)) - 1;
    let ceiling = policy
        .backoff_base
        .saturating_mul(factor as u32)
        .min(policy.backoff_max);
    let ms = ceiling.as_secs_f64() * fastrand::f64();
    Duration::from_secs_f64(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_as_envoy_defines_them() {
        let five_xx = RetryOn {
            five_xx: true,
            ..Default::default()
        };
        assert!(retriable(&five_xx, &Attempt::Status(500)));
        assert!(retriable(&five_xx, &Attempt::ConnectFailure));
        assert!(retriable(&five_xx, &Attempt::PerTryTimeout));
        assert!(!retriable(&five_xx, &Attempt::Status(404)));
        let gw = RetryOn {
            gateway_error: true,
            ..Default::default()
        };
        assert!(retriable(&gw, &Attempt::Status(503)));
        assert!(!retriable(&gw, &Attempt::Status(500)));
        let r4 = RetryOn {
            retriable_4xx: true,
            ..Default::default()
        };
        assert!(retriable(&r4, &Attempt::Status(409)));
        assert!(!retriable(&r4, &Attempt::Status(403)));
        let d = RetryPolicy::istio_default();
        assert!(retriable(&d.on, &Attempt::Status(503)));
        assert!(!retriable(&d.on, &Attempt::Status(500)));
        assert!(!retriable(&d.on, &Attempt::Reset));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let p = RetryPolicy::istio_default();
        for _ in 0..200 {
            assert!(backoff(&p, 1) <= Duration::from_millis(25));
            assert!(backoff(&p, 2) <= Duration::from_millis(75));
            assert!(backoff(&p, 10) <= Duration::from_millis(250));
        }
        let spread: std::collections::BTreeSet<_> =
            (0..50).map(|_| backoff(&p, 3).as_micros()).collect();
        assert!(spread.len() > 10, "backoff must be jittered");
    }
}
