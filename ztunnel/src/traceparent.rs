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
        let (hi, lo, parent) = (next_random(), next_random(), next_random());
        Self {
            // W3C: all-zero ids are invalid.
            trace_id: ((u128::from(hi) << 64) | u128::from(lo)).max(1),
            parent_id: parent.max(1),
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

thread_local! {
    /// SplitMix64 state, seeded once per thread from the kernel: the ids only need to tell
    /// connections apart, and a getrandom(2) per connection would sit on the accept path.
    static STATE: std::cell::Cell<u64> = std::cell::Cell::new(seed());
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    match crate::sys::random_bytes(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        // Unreachable on Linux 3.17+; still distinct per process and thread start.
        Err(e) => {
            tracing::debug!(error = %e, "getrandom failed; trace ids seeded from the clock");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
        }
    }
}

/// The next SplitMix64 output of this thread's generator.
fn next_random() -> u64 {
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
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
