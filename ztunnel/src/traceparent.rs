//! W3C Trace Context `traceparent`, sent on every CONNECT as Istio's ztunnel sends it: one
//! random trace id per tunnelled connection, which the destination adopts, so that the two
//! agents' access-log lines of one connection carry the same `trace_id`.

use std::fmt;

/// `00-<trace id>-<parent id>-<flags>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: u128,
    parent_id: u64,
    flags: u8,
}

impl TraceParent {
    /// A new trace: random ids, not sampled (we export no spans).
    pub fn new() -> Self {
        let mut b = [0u8; 24];
        if let Err(e) = crate::sys::random_bytes(&mut b) {
            // Unreachable on Linux 3.17+; the ids only need to tell connections apart.
            tracing::debug!(error = %e, "getrandom failed; trace id from the clock");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            b[..16].copy_from_slice(&now.to_le_bytes());
            b[16..].copy_from_slice(&(now as u64 ^ u64::from(std::process::id())).to_le_bytes());
        }
        let (t, p) = b.split_at(16);
        Self {
            // W3C: all-zero ids are invalid.
            trace_id: u128::from_le_bytes(t.try_into().unwrap_or_default()).max(1),
            parent_id: u64::from_le_bytes(p.try_into().unwrap_or_default()).max(1),
            flags: 0,
        }
    }

    /// A received header value, or `None` when it is not a valid `traceparent` (the receiver
    /// then starts a trace of its own, as the specification asks).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = hex_field(parts.next()?, 2)?;
        let trace_id = u128::from_str_radix(hex_field(parts.next()?, 32)?, 16).ok()?;
        let parent_id = u64::from_str_radix(hex_field(parts.next()?, 16)?, 16).ok()?;
        let flags = u8::from_str_radix(hex_field(parts.next()?, 2)?, 16).ok()?;
        // Version 00 has exactly four fields; later versions may append more; ff is invalid.
        let valid = match version {
            "00" => parts.next().is_none(),
            "ff" => false,
            _ => true,
        };
        (valid && trace_id != 0 && parent_id != 0).then_some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The 32 hex digits that name the trace.
    pub fn trace_id(&self) -> TraceId {
        TraceId(self.trace_id)
    }
}

impl Default for TraceParent {
    fn default() -> Self {
        Self::new()
    }
}

/// The header value.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// A trace id as logged: 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceId(u128);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// `s` when it is `len` lowercase hex digits (upper case is invalid in `traceparent`).
fn hex_field(s: &str, len: usize) -> Option<&str> {
    (s.len() == len && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_traceparent_is_a_valid_header_that_reads_back_the_same() {
        let a = TraceParent::new();
        let header = a.to_string();
        assert_eq!(header.len(), 55, "{header}");
        assert!(
            header.starts_with("00-") && header.ends_with("-00"),
            "{header}"
        );
        assert_eq!(TraceParent::parse(&header), Some(a));
        assert_ne!(
            TraceParent::new().trace_id(),
            a.trace_id(),
            "two traces, one id"
        );
    }

    #[test]
    fn invalid_traceparents_are_refused_as_the_specification_says() {
        let ok = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let t = TraceParent::parse(ok).unwrap();
        assert_eq!(t.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(t.to_string(), ok);
        // A later version may carry more fields.
        assert!(
            TraceParent::parse("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x")
                .is_some()
        );
        for bad in [
            "",
            "garbage",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?} was accepted");
        }
    }
}
