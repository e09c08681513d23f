//! Durations in the two syntaxes our sources use.
//!
//! - Gateway API (GEP-2257): one to four `<integer><unit>` parts, units `h`, `m`, `s`, `ms`,
//!   integers of at most 5 digits: `1s`, `500ms`, `1h2m`. `0s` means "no timeout".
//! - Istio (protobuf `Duration` as Istio reads it): parts may have a fraction and the units
//!   also include `us` and `ns`: `0.5s`, `250ms`, `1m`, `1h30m`.
//!
//! Either way a duration may be at most [`MAX_DURATION`], a year: longer is surely a mistake
//! (`0s` disables a timeout), and the proxy adds durations to the clock, which a value near
//! `u64::MAX` seconds would overflow. GEP-2257's syntax alone would allow 45 years.

use serde::{Deserialize, Deserializer, de};
use std::time::Duration;

/// The longest duration a rule may hold: a year (8760h).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// `total` if it is at most [`MAX_DURATION`].
fn bounded(text: &str, total: Duration) -> Result<Duration, String> {
    if total > MAX_DURATION {
        return Err(format!(
            "invalid duration `{text}`: longer than the maximum of 8760h (a year)"
        ));
    }
    Ok(total)
}

/// A Gateway API duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GatewayDuration(pub Duration);

/// An Istio duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IstioDuration(pub Duration);

impl GatewayDuration {
    /// `None` for `0s`, which Gateway API defines as "disabled".
    pub(crate) fn nonzero(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

impl IstioDuration {
    /// `None` for zero, which Istio reads as "disabled".
    pub(crate) fn nonzero(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

/// Parses a Gateway API duration.
pub(crate) fn parse_gateway(text: &str) -> Result<Duration, String> {
    let expected = || {
        format!(
            "invalid duration `{text}`: expected Gateway API form such as `1s`, `500ms`, `1h2m` \
             (integers, units h, m, s, ms)"
        )
    };
    let parts = split_parts(text).ok_or_else(expected)?;
    if parts.is_empty() || parts.len() > 4 {
        return Err(expected());
    }
    let mut total = Duration::ZERO;
    for (number, unit) in parts {
        if number.is_empty() || number.len() > 5 || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(expected());
        }
        let n: u64 = number.parse().map_err(|_| expected())?;
        let part = match unit {
            "h" => Duration::from_secs(n * 3600),
            "m" => Duration::from_secs(n * 60),
            "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            _ => return Err(expected()),
        };
        total += part;
    }
    bounded(text, total)
}

/// Parses an Istio duration.
pub(crate) fn parse_istio(text: &str) -> Result<Duration, String> {
    let expected = || {
        format!(
            "invalid duration `{text}`: expected a duration such as `1s`, `0.5s`, `250ms`, `1m` \
             (units h, m, s, ms, us, ns)"
        )
    };
    let parts = split_parts(text).ok_or_else(expected)?;
    if parts.is_empty() {
        return Err(expected());
    }
    let mut total = Duration::ZERO;
    for (number, unit) in parts {
        let valid = !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && number.bytes().filter(|&b| b == b'.').count() <= 1
            && number != ".";
        if !valid {
            return Err(expected());
        }
        let n: f64 = number.parse().map_err(|_| expected())?;
        let seconds_per_unit = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(expected()),
        };
        let part = Duration::try_from_secs_f64(n * seconds_per_unit).map_err(|_| expected())?;
        total = total.checked_add(part).ok_or_else(expected)?;
    }
    bounded(text, total)
}

/// Splits `1h2.5m` into `[("1", "h"), ("2.5", "m")]`; `None` if a part has no unit.
fn split_parts(text: &str) -> Option<Vec<(&str, &str)>> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let after = &rest[number_end..];
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        if unit_end == 0 {
            return None;
        }
        parts.push((&rest[..number_end], &after[..unit_end]));
        rest = &after[unit_end..];
    }
    Some(parts)
}

impl<'de> Deserialize<'de> for GatewayDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_gateway(&text).map(Self).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for IstioDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_istio(&text).map(Self).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_forms() {
        assert_eq!(parse_gateway("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_gateway("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_gateway("1h2m"), Ok(Duration::from_secs(3720)));
        assert_eq!(parse_gateway("0s"), Ok(Duration::ZERO));
        assert_eq!(
            parse_gateway("1h1m1s1ms"),
            Ok(Duration::from_millis(3_661_001))
        );
    }

    #[test]
    fn gateway_refuses_fractions_bare_numbers_and_too_many_parts() {
        for bad in [
            "0.5s",
            "10",
            "",
            "s",
            "1d",
            "1h1m1s1ms1s",
            "123456s",
            "-1s",
            "1 s",
        ] {
            let err = parse_gateway(bad).expect_err(bad);
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn istio_forms() {
        assert_eq!(parse_istio("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_istio("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_istio("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_istio("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_istio("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_istio("100us"), Ok(Duration::from_micros(100)));
    }

    #[test]
    fn durations_longer_than_a_year_are_refused() {
        assert_eq!(parse_istio("8760h"), Ok(MAX_DURATION));
        assert_eq!(parse_gateway("8760h"), Ok(MAX_DURATION));
        for bad in ["8760h0.5s", "8761h", "9300000000000000000s"] {
            let err = parse_istio(bad).expect_err(bad);
            assert!(
                err.contains(&format!("`{bad}`")) && err.contains("8760h"),
                "{err}"
            );
        }
        for bad in ["8761h", "99999h", "8760h1s"] {
            let err = parse_gateway(bad).expect_err(bad);
            assert!(
                err.contains(&format!("`{bad}`")) && err.contains("8760h"),
                "{err}"
            );
        }
    }

    #[test]
    fn istio_refuses_garbage() {
        for bad in ["", "1", "1x", "1..2s", ".s", "abc", "-1s"] {
            assert!(parse_istio(bad).is_err(), "{bad}");
        }
    }
}
