//! The `CONFIG` array: the programs' run-time settings (slots in [`mesh_common::config`]).

use aya::{Ebpf, maps::Array};
use mesh_common::{INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, config, maps};

use super::RedirectError;

/// The highest aya-log level: trace.
pub(super) const MAX_LOG_LEVEL: u32 = 5;

/// Fails unless `level` is 0 (off) ..= 5 (trace).
pub(super) fn check_log_level(level: u32) -> Result<(), RedirectError> {
    if level > MAX_LOG_LEVEL {
        return Err(RedirectError::LogLevel { level });
    }
    Ok(())
}

/// Writes the mark, the outbound (15001) and inbound plaintext (15006) ports, the log level
/// and the flags (native IPv6 captured).
pub(super) fn write(ebpf: &mut Ebpf, mark: u32, log_level: u32) -> Result<(), RedirectError> {
    let slots = [
        (config::MARK, mark, "mark"),
        (
            config::OUTBOUND_PORT,
            u32::from(OUTBOUND_PORT),
            "outbound port",
        ),
        (
            config::INBOUND_PLAINTEXT_PORT,
            u32::from(INBOUND_PLAINTEXT_PORT),
            "inbound plaintext port",
        ),
        (config::LOG_LEVEL, log_level, "log level"),
        // The agent listens on `[::1]:15001` in every pod that has IPv6.
        (config::FLAGS, config::FLAG_REDIRECT_IPV6, "flags"),
    ];
    for (slot, value, what) in slots {
        set(ebpf, slot, value, what)?;
    }
    Ok(())
}

/// Writes `CONFIG[LOG_LEVEL]`.
pub(super) fn set_log_level(ebpf: &mut Ebpf, level: u32) -> Result<(), RedirectError> {
    set(ebpf, config::LOG_LEVEL, level, "log level")
}

/// Writes one slot; `what` names it for the error.
fn set(ebpf: &mut Ebpf, slot: u32, value: u32, what: &str) -> Result<(), RedirectError> {
    let map = ebpf
        .map_mut(maps::CONFIG)
        .ok_or(RedirectError::MissingMap { map: maps::CONFIG })?;
    let mut array: Array<_, u32> = Array::try_from(map)
        .map_err(|err| RedirectError::map(maps::CONFIG, "opening as an Array<u32>", err))?;
    array.set(slot, value, 0).map_err(|err| {
        RedirectError::map(
            maps::CONFIG,
            format!("setting slot {slot} ({what}) to {value}"),
            err,
        )
    })
}
