//! Working inside pods' network namespaces without moving the agent: a short-lived thread
//! `setns`es, makes the sockets, and ends; sockets stay in the namespace they were made in,
//! so the agent then uses them from anywhere.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

/// Runs `f` on a thread inside the network namespace `ns`.
pub fn run_in<T: Send>(ns: &File, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns with a valid namespace fd, on this thread only; the thread ends
            // right after, so no other code runs in the wrong namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("thread inside the network namespace panicked"))?
    })
}

type Request = (
    socket2::Domain,
    tokio::sync::oneshot::Sender<io::Result<socket2::Socket>>,
);

/// Makes sockets inside one pod's network namespace, on a thread that lives there, so that the
/// agent's connections leave with the pod's address.
#[derive(Debug)]
pub struct PodNetns {
    pub path: PathBuf,
    pub file: File,
    requests: mpsc::Sender<Request>,
}

impl PodNetns {
    /// Opens the namespace at `path` (e.g. `/run/netns/<name>`).
    pub fn open(path: &Path) -> io::Result<Arc<Self>> {
        let file = File::open(path)?;
        let thread_ns = file.try_clone()?;
        let (requests, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("netns-sockets".into())
            .spawn(move || {
                // SAFETY: as in `run_in`; this thread only makes sockets.
                let entered = unsafe { libc::setns(thread_ns.as_raw_fd(), libc::CLONE_NEWNET) };
                let entered = (entered == 0)
                    .then_some(())
                    .ok_or_else(io::Error::last_os_error);
                for (domain, reply) in rx {
                    let socket = match &entered {
                        Ok(()) => socket2::Socket::new(domain, socket2::Type::STREAM, None),
                        Err(e) => Err(io::Error::new(
                            e.kind(),
                            format!("entering the namespace: {e}"),
                        )),
                    };
                    let _ = reply.send(socket);
                }
            })?;
        Ok(Arc::new(Self {
            path: path.to_owned(),
            file,
            requests,
        }))
    }

    /// A new TCP socket made inside the namespace.
    pub async fn socket(&self, domain: socket2::Domain) -> io::Result<socket2::Socket> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests
            .send((domain, tx))
            .map_err(|_| io::Error::other("namespace socket thread ended"))?;
        rx.await
            .map_err(|_| io::Error::other("namespace socket thread ended"))?
    }

    /// Binds a listener inside the namespace with `mark` set.
    pub fn listen(
        &self,
        addr: std::net::SocketAddr,
        mark: Option<u32>,
    ) -> io::Result<std::net::TcpListener> {
        run_in(&self.file, || crate::sys::listen(addr, mark))?
    }

    /// Whether the namespace is still there (its path still names the namespace we hold).
    pub fn still_exists(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        }
    }
}
