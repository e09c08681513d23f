//! Child processes that are stopped on drop, with their output in a file.

use crate::cleanup::{self, Registration};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running child; SIGTERM then SIGKILL on drop.
pub struct Process {
    child: Arc<Mutex<Child>>,
    log: PathBuf,
    _cleanup: Registration,
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill with a pid we spawned.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

fn stop(child: &Mutex<Child>, grace: Duration) {
    let mut c = child.lock().unwrap_or_else(|p| p.into_inner());
    if let Ok(Some(_)) = c.try_wait() {
        return;
    }
    signal(c.id(), libc::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Process {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {cmd:?}: {e}"))?;
        let child = Arc::new(Mutex::new(child));
        let c = child.clone();
        Ok(Process {
            child,
            log: log.to_owned(),
            _cleanup: cleanup::register(move || stop(&c, Duration::from_secs(3))),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).id()
    }

    /// The output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it has exited, with its status.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_wait()
            .ok()
            .flatten()
    }

    /// Sends `sig` (e.g. `libc::SIGINT`).
    pub fn signal(&self, sig: libc::c_int) {
        signal(self.pid(), sig);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait(&self, timeout: Duration) -> Option<std::process::ExitStatus> {
        crate::eventually_opt(timeout, || self.exited())
    }

    /// Stops the process (SIGTERM, then SIGKILL after `grace`).
    pub fn stop(&self, grace: Duration) {
        stop(&self.child, grace);
    }

    /// Waits until the process answers 200 on `/healthz/ready` (port 15021) inside `ns`;
    /// fails with `what` and its log if it exits or takes longer than 15 s.
    pub fn wait_ready(&self, ns: &crate::NetNs, what: &str) -> anyhow::Result<()> {
        let ready = crate::eventually_opt(std::time::Duration::from_secs(15), || {
            if self.exited().is_some() {
                return Some(false);
            }
            let r = crate::probe::http_get(
                ns,
                std::net::SocketAddr::from(([127, 0, 0, 1], 15021)),
                "/healthz/ready",
            );
            matches!(r, Ok((200, _))).then_some(true)
        });
        anyhow::ensure!(
            ready == Some(true),
            "{what} did not become ready:\n{}",
            self.log()
        );
        Ok(())
    }
}
