//! VirtualService `fault` and `retries`.

use super::route::Percent;
use crate::duration::IstioDuration;
use crate::error::{FieldError, FieldResult};
use crate::fields::{percent, status_code};
use crate::model::{Abort, Delay, Fault, RetryOn, RetryPolicy};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct HttpRetry {
    attempts: Option<u32>,
    per_try_timeout: Option<IstioDuration>,
    retry_on: Option<String>,
    #[serde(rename = "retryRemoteLocalities")]
    _retry_remote_localities: Option<bool>,
    backoff: Option<IstioDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FaultInjection {
    delay: Option<DelaySpec>,
    abort: Option<AbortSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DelaySpec {
    fixed_delay: IstioDuration,
    percentage: Option<Percent>,
    /// Deprecated integer form of `percentage`.
    percent: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AbortSpec {
    http_status: u32,
    percentage: Option<Percent>,
}

/// A fault without `percentage` is never applied, as Istio translates it (its reference:
/// "if left unspecified, no request will be delayed/aborted"); said at load, since it is easy
/// to write by mistake.
pub(super) fn fault(f: &FaultInjection, at: &str) -> FieldResult<Fault> {
    let unspecified = |what: &str| {
        tracing::warn!(field = %format!("{at}.{what}.percentage"), "fault without percentage: never applied, as in Istio");
        0.0
    };
    let delay = match &f.delay {
        None => None,
        Some(d) => {
            let p = match (&d.percentage, d.percent) {
                (Some(p), _) => p.value,
                (None, Some(p)) => f64::from(p),
                (None, None) => unspecified("delay"),
            };
            Some(Delay {
                fixed: d.fixed_delay.0,
                percent: percent(p, &format!("{at}.delay.percentage.value"))?,
            })
        }
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => Some(Abort {
            status: status_code(a.http_status, &format!("{at}.abort.httpStatus"))?,
            percent: percent(
                a.percentage
                    .as_ref()
                    .map_or_else(|| unspecified("abort"), |p| p.value),
                &format!("{at}.abort.percentage.value"),
            )?,
        }),
    };
    Ok(Fault { delay, abort })
}

/// Istio: `attempts` 0 (or absent) disables retries; `retryOn` replaces the default list.
pub(super) fn retry(r: &HttpRetry, at: &str) -> FieldResult<RetryPolicy> {
    let default = RetryPolicy::istio_default();
    let base = r
        .backoff
        .and_then(IstioDuration::nonzero)
        .unwrap_or(default.backoff_base);
    let attempts = r.attempts.unwrap_or(0);
    Ok(RetryPolicy {
        attempts,
        // No retries, no retry policy at all in Istio: `perTryTimeout` goes with it.
        per_try_timeout: r
            .per_try_timeout
            .and_then(IstioDuration::nonzero)
            .filter(|_| attempts > 0),
        on: match &r.retry_on {
            Some(list) => retry_on(list, &format!("{at}.retryOn"))?,
            None => default.on,
        },
        backoff_base: base,
        backoff_max: base * 10,
    })
}

/// Parses Envoy's comma-separated `retry_on` list as Istio passes it through.
pub(crate) fn retry_on(list: &str, field: &str) -> FieldResult<RetryOn> {
    let mut on = RetryOn::default();
    for condition in list.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        match condition {
            "5xx" => on.five_xx = true,
            "gateway-error" => on.gateway_error = true,
            "reset" => on.reset = true,
            "connect-failure" => on.connect_failure = true,
            "retriable-4xx" => on.retriable_4xx = true,
            "refused-stream" => on.refused_stream = true,
            "retriable-status-codes" => {}
            "cancelled" | "deadline-exceeded" | "internal" | "resource-exhausted"
            | "unavailable" => {
                return Err(FieldError::unsupported(
                    field,
                    &format!("the gRPC retry condition `{condition}`"),
                ));
            }
            code => match code.parse::<u16>() {
                Ok(status) if (100..=599).contains(&status) => {
                    if !on.status_codes.contains(&status) {
                        on.status_codes.push(status);
                    }
                }
                _ => {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "unknown retry condition `{condition}`: expected 5xx, gateway-error, \
                             reset, connect-failure, retriable-4xx, refused-stream, \
                             retriable-status-codes or a status code"
                        ),
                    ));
                }
            },
        }
    }
    Ok(on)
}
