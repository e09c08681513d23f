//! Forwarding the programs' aya-log records to `tracing`.
//!
//! [`aya_log::EbpfLogger`] hands the records to the `log` crate's global logger;
//! `tracing_subscriber`'s `init()` (as `main` calls it) installs the `tracing-log` bridge, so
//! they come out as `tracing` events with the eBPF module as target (`mesh_redirect::connect`).
//! The programs emit records only up to `CONFIG[LOG_LEVEL]` (0, the default, emits none).

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::{
    io::{Interest, unix::AsyncFd},
    task::JoinHandle,
};

use super::RedirectError;

/// A tokio task that reads one object's `AYA_LOGS` ring buffer. It owns the ring buffer's fd;
/// dropping the reader stops the task.
pub(super) struct LogReader {
    task: JoinHandle<()>,
}

impl LogReader {
    /// Takes `AYA_LOGS` out of `ebpf` and starts forwarding its records. Call it before loading
    /// the programs: they refer to the map by the fd the reader keeps open. `copy` names the
    /// object in errors and in the log.
    ///
    /// # Errors
    /// [`RedirectError::NoRuntime`] outside a tokio runtime; [`RedirectError::Logger`] or
    /// [`RedirectError::LogPoll`] if the ring buffer cannot be opened or registered.
    pub(super) fn start(ebpf: &mut Ebpf, copy: &str) -> Result<Self, RedirectError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| RedirectError::NoRuntime)?;
        let logger = EbpfLogger::init(ebpf).map_err(|source| RedirectError::Logger {
            copy: copy.to_owned(),
            source: Box::new(source),
        })?;
        // SAFETY: the logger owns the ring buffer's map fd, which stays open and is the one
        // `as_raw_fd` returns for as long as the logger lives, and the AsyncFd owns the logger.
        let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
        let mut ring = registered.map_err(|err| RedirectError::LogPoll {
            copy: copy.to_owned(),
            source: err.into_parts().1,
        })?;
        let copy = copy.to_owned();
        let task = runtime.spawn(async move {
            loop {
                match ring.readable_mut().await {
                    Ok(mut ready) => {
                        ready.get_inner_mut().flush();
                        ready.clear_ready();
                    }
                    Err(err) => {
                        tracing::warn!(%err, copy, "polling AYA_LOGS failed; eBPF logs stop");
                        return;
                    }
                }
            }
        });
        Ok(Self { task })
    }
}

impl Drop for LogReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}
