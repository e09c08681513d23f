//! [`RedirectError`]: what can go wrong loading, attaching and driving the eBPF programs.

use std::{io, path::PathBuf};

use aya::{maps::MapError, programs::ProgramError};

/// An error of the redirection loader. Every variant names the program or map concerned and
/// what was being done; the underlying error, if any, is the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    /// The cgroup folder to attach the cgroup programs to could not be opened.
    #[error("opening the cgroup folder {path} to attach the cgroup programs")]
    Cgroup {
        /// The folder, as given in `RedirectConfig::cgroup`.
        path: PathBuf,
        /// Why `open` failed.
        #[source]
        source: io::Error,
    },

    /// The object could not be parsed, or its maps not created (or opened from their pins).
    #[error("loading the eBPF object {object} ({copy})")]
    Object {
        /// Which object: `mesh-redirect (built in)` or the file given as `EBPF_OBJECT`.
        object: String,
        /// Which copy: `main`, or the per-namespace copy for sk_lookup (with its netns cookie).
        copy: String,
        /// aya's error.
        #[source]
        source: Box<aya::EbpfError>,
    },

    /// The object file given instead of the built-in object could not be read.
    #[error("reading the eBPF object file {path}")]
    ObjectFile {
        /// The file (`EBPF_OBJECT`).
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: io::Error,
    },

    /// The object file given instead of the built-in object is not an eBPF ELF object.
    #[error("the eBPF object file {path} is not an eBPF ELF object: {problem}")]
    NotAnObject {
        /// The file (`EBPF_OBJECT`).
        path: PathBuf,
        /// What is wrong with it.
        problem: &'static str,
    },

    /// The object has no program of this name (the object and the agent disagree).
    #[error("program {program} is not in the eBPF object")]
    MissingProgram {
        /// The program's name.
        program: &'static str,
    },

    /// The object has no map of this name (the object and the agent disagree).
    #[error("map {map} is not in the eBPF object")]
    MissingMap {
        /// The map's name.
        map: &'static str,
    },

    /// The kernel refused to load a program; its verifier says why.
    #[error("the kernel refused program {program} (BPF_PROG_LOAD); verifier log:\n{verifier_log}")]
    Verifier {
        /// The program's name.
        program: &'static str,
        /// The error `BPF_PROG_LOAD` returned.
        #[source]
        io_error: io::Error,
        /// The verifier's log.
        verifier_log: String,
    },

    /// Another operation on a program failed (wrong program type, attach).
    #[error("program {program}: {action}")]
    Program {
        /// The program's name.
        program: &'static str,
        /// What was being done, for example `attaching to cgroup /sys/fs/cgroup`.
        action: String,
        /// aya's error.
        #[source]
        source: Box<ProgramError>,
    },

    /// A `bpf_link` operation on a cgroup program failed (attach, replace, pin, detach).
    #[error("program {program}: {action}")]
    Link {
        /// The program's name.
        program: &'static str,
        /// What was being done, for example `attaching to cgroup /sys/fs/cgroup`.
        action: String,
        /// The error of the `bpf(2)` call or of the file operation on the pin.
        #[source]
        source: io::Error,
    },

    /// A file operation in the pin folder failed (or mounting bpffs for it).
    #[error("pin folder {path}: {action}")]
    Pin {
        /// The pin folder.
        path: PathBuf,
        /// What was being done, for example `removing the pin of map ENROLLED`.
        action: String,
        /// The error.
        #[source]
        source: io::Error,
    },

    /// The pin folder is not on a bpf filesystem, and is not under `/sys/fs/bpf` (where the
    /// agent would mount one).
    #[error(
        "pin folder {path} is not on a bpf filesystem: mount one there (mount -t bpf bpf <dir>) \
         or choose a folder under /sys/fs/bpf"
    )]
    NotBpffs {
        /// The pin folder.
        path: PathBuf,
    },

    /// Another process (a running agent) holds the pin folder's lock.
    #[error("pin folder {path} is in use by a running agent{waited}; stop it first")]
    PinBusy {
        /// The pin folder.
        path: PathBuf,
        /// How long we waited, for example ` (waited 30s for it to exit)`; empty if we did not.
        waited: String,
    },

    /// An operation on a map failed.
    #[error("map {map}: {action}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// What was being done, for example `inserting netns cookie 4096`.
        action: String,
        /// aya's error.
        #[source]
        source: Box<MapError>,
    },

    /// The aya-log reader could not open the `AYA_LOGS` ring buffer.
    #[error("map AYA_LOGS: starting the aya-log reader ({copy})")]
    Logger {
        /// Which copy of the object (see [`RedirectError::Object`]).
        copy: String,
        /// aya-log's error.
        #[source]
        source: Box<aya_log::Error>,
    },

    /// The aya-log reader could not register the `AYA_LOGS` ring buffer with tokio.
    #[error("map AYA_LOGS: registering the aya-log reader with tokio ({copy})")]
    LogPoll {
        /// Which copy of the object (see [`RedirectError::Object`]).
        copy: String,
        /// tokio's error.
        #[source]
        source: io::Error,
    },

    /// `Redirector::load` and `Redirector::enroll` were called outside a tokio runtime.
    #[error(
        "map AYA_LOGS: the aya-log reader needs a tokio runtime; call the redirector from inside one"
    )]
    NoRuntime,

    /// A log level above 5 (trace) was asked for.
    #[error("map CONFIG: log level {level} is out of range (0 off ..= 5 trace)")]
    LogLevel {
        /// The level asked for.
        level: u32,
    },
}

impl RedirectError {
    /// Classifies an error of an operation on `program`: a load refused by the verifier becomes
    /// [`RedirectError::Verifier`] with its log, anything else [`RedirectError::Program`].
    pub(super) fn program(
        program: &'static str,
        action: impl Into<String>,
        err: ProgramError,
    ) -> Self {
        match err {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => Self::Verifier {
                program,
                io_error,
                verifier_log: verifier_log.to_string(),
            },
            source => Self::Program {
                program,
                action: action.into(),
                source: Box::new(source),
            },
        }
    }

    /// An error of a `bpf_link` operation on `program`.
    pub(super) fn link(
        program: &'static str,
        action: impl Into<String>,
        source: io::Error,
    ) -> Self {
        Self::Link {
            program,
            action: action.into(),
            source,
        }
    }

    /// An error of a file operation in the pin folder `path`.
    pub(super) fn pin(
        path: &std::path::Path,
        action: impl Into<String>,
        source: io::Error,
    ) -> Self {
        Self::Pin {
            path: path.to_owned(),
            action: action.into(),
            source,
        }
    }

    /// An error of an operation on `map`.
    pub(super) fn map(map: &'static str, action: impl Into<String>, source: MapError) -> Self {
        Self::Map {
            map,
            action: action.into(),
            source: Box::new(source),
        }
    }
}

/// Whether a map error is the kernel's "no such key" (`ENOENT` from `bpf_map_delete_elem`).
pub(super) fn is_not_found(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(aya::sys::SyscallError { io_error, .. }) => {
            io_error.kind() == io::ErrorKind::NotFound
        }
        _ => false,
    }
}
