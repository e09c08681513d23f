//! Log output, for the agent and the waypoint alike. Lines go to stdout through one shared
//! buffer that a background thread flushes every [`FLUSH_EVERY`] (and [`Flush`] at exit),
//! so that a proxy busy with requests does not make a write(2) per access-log line (those
//! writes alone were 4% of a waypoint's CPU at 1000 requests/s). A line reaches the file
//! up to that much later; a process killed outright loses at most that much.

use std::io::{self, BufWriter, Stdout, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::ParseError;
use tracing_subscriber::fmt::MakeWriter;

/// How often buffered lines are written out.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A full buffer is written out at once.
const BUFFER: usize = 64 * 1024;

/// The shared buffer in front of stdout.
#[derive(Clone)]
struct Output(Arc<Mutex<BufWriter<Stdout>>>);

impl Output {
    fn with<T>(&self, f: impl FnOnce(&mut BufWriter<Stdout>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.with(|w| w.write(buf))
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.with(|w| w.write_all(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.with(|w| w.flush())
    }
}

impl<'a> MakeWriter<'a> for Output {
    type Writer = Output;
    fn make_writer(&'a self) -> Output {
        self.clone()
    }
}

/// Writes out what is buffered when dropped: keep it alive in `main`.
pub struct Flush(Output);

impl Drop for Flush {
    fn drop(&mut self) {
        let _ = self.0.flush();
    }
}

/// Installs the global subscriber with `filter` (`RUST_LOG` syntax), writing to stdout.
///
/// # Errors
/// If `filter` does not parse.
pub fn init(filter: &str) -> Result<Flush, ParseError> {
    let filter = EnvFilter::try_new(filter)?;
    let out = Output(Arc::new(Mutex::new(BufWriter::with_capacity(
        BUFFER,
        io::stdout(),
    ))));
    let mut flusher = out.clone();
    // Without the thread lines still go out, whenever the buffer fills and at exit.
    let _ = std::thread::Builder::new()
        .name("log-flush".into())
        .spawn(move || {
            loop {
                std::thread::sleep(FLUSH_EVERY);
                let _ = flusher.flush();
            }
        });
    tracing_subscriber::fmt()
        .with_ansi(io::IsTerminal::is_terminal(&io::stdout()))
        .with_env_filter(filter)
        .with_writer(out.clone())
        .init();
    Ok(Flush(out))
}
