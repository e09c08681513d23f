//! The process's threads, as Envoy arranges them: one control thread (configuration, admin,
//! enrolment, accepting) and `n` data-plane workers, each a single-threaded tokio runtime.
//!
//! An accepted connection is handed to one worker and everything it needs stays there: its
//! task, the HBONE connection it rides (pools are kept per worker) and that connection's
//! HTTP/2 driver. A byte never has to wake a second thread on its way through. A work-stealing
//! runtime wakes an idle worker whenever more than one task is ready, and a tunnel's copy task
//! and its HTTP/2 driver then often run on different threads: at 1000 requests/s that was 2.5
//! futex calls per request (strace).

use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpStream;
use tokio::runtime::Handle;

struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    /// Which worker this thread is (0 off the workers).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The default number of workers: two, as Istio's ztunnel has, but never more than half the
/// CPUs this process may use. A proxy shares its node with the workloads it carries: on a
/// 2-CPU node a second worker spreads a few connections over two threads, so each burst of
/// requests wakes both (the bench measured 0.21 against 0.15 vCPU for both agents at 1000
/// requests/s, the same stream throughput). The price is the ceiling when one proxy needs
/// more than a core, which on such a node leaves the workloads nothing.
pub fn default_count() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / 2).clamp(1, 2)
}

/// Starts `workers` data-plane threads, then runs `main` on the control thread until it ends.
///
/// # Errors
/// If a runtime or thread cannot be made, or `main` fails.
pub fn run<F>(workers: usize, main: F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    use anyhow::Context;
    let handles = (0..workers.max(1))
        .map(|i| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(i));
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => {
                            let _ = tx.send(Ok(rt.handle().clone()));
                            // Runs the tasks handed to this worker for as long as the process.
                            rt.block_on(std::future::pending::<()>());
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })
                .context("starting a worker thread")?;
            rx.recv()
                .context("a worker thread ended at start")?
                .context("starting a worker's runtime")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let _ = WORKERS.set(Workers {
        handles,
        next: AtomicUsize::new(0),
    });
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the control runtime")?
        .block_on(main)
}

/// The index of the worker running the caller (0 off the workers).
fn current() -> usize {
    INDEX.with(Cell::get)
}

/// One `T` per worker, for state only that worker's tasks use, such as connection pools
/// whose connections' drivers run there. Without workers there is one.
pub struct PerWorker<T>(Box<[T]>);

impl<T: Default> Default for PerWorker<T> {
    fn default() -> Self {
        let n = WORKERS.get().map_or(1, |w| w.handles.len());
        Self((0..n).map(|_| T::default()).collect())
    }
}

impl<T> PerWorker<T> {
    /// The caller's worker's `T`.
    pub fn here(&self) -> &T {
        &self.0[current() % self.0.len()]
    }

    /// Every worker's.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }
}

/// Runs `serve` for an accepted connection on the next worker, round robin. Without workers
/// (a library user's own runtime) it runs as a task of the current runtime.
pub fn hand_off<F, Fut>(stream: TcpStream, serve: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(w) = WORKERS.get() else {
        tokio::spawn(serve(stream));
        return;
    };
    // The socket leaves this thread's reactor and joins the worker's.
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "handing a connection to a worker");
            return;
        }
    };
    let i = w.next.fetch_add(1, Ordering::Relaxed) % w.handles.len();
    w.handles[i].spawn(async move {
        match TcpStream::from_std(stream) {
            Ok(s) => serve(s).await,
            Err(e) => tracing::warn!(error = %e, "registering a connection with a worker"),
        }
    });
}
