//! [`Object`]: the eBPF object the redirector loads: the one built into the binary (by
//! `build.rs`), or a file given as `EBPF_OBJECT`.

use std::{fmt, path::Path, path::PathBuf, sync::Arc};

use super::RedirectError;

/// `EM_BPF`, the ELF machine of eBPF objects.
const EM_BPF: u16 = 247;

/// The bytes of an eBPF object, aligned for the ELF parser, and where they came from.
#[derive(Clone)]
pub(super) struct Object(Arc<Source>);

enum Source {
    /// The object built into the binary.
    Embedded,
    /// A file: its words (8-byte aligned) and its length in bytes.
    File {
        path: PathBuf,
        words: Vec<u64>,
        len: usize,
    },
}

impl Object {
    /// The object built into the binary.
    pub(super) fn embedded() -> Self {
        Self(Arc::new(Source::Embedded))
    }

    /// Reads the object file `path` and checks that it is an eBPF ELF object.
    ///
    /// # Errors
    /// [`RedirectError::ObjectFile`] if it cannot be read, [`RedirectError::NotAnObject`] if
    /// it is not a 64-bit little-endian ELF file for `EM_BPF`. Both name the file.
    pub(super) fn from_file(path: &Path) -> Result<Self, RedirectError> {
        let bytes = std::fs::read(path).map_err(|source| RedirectError::ObjectFile {
            path: path.to_owned(),
            source,
        })?;
        check_elf(&bytes).map_err(|problem| RedirectError::NotAnObject {
            path: path.to_owned(),
            problem,
        })?;
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *word = u64::from_ne_bytes(b);
        }
        Ok(Self(Arc::new(Source::File {
            path: path.to_owned(),
            words,
            len: bytes.len(),
        })))
    }

    /// The object's bytes.
    pub(super) fn bytes(&self) -> &[u8] {
        match &*self.0 {
            Source::Embedded => embedded(),
            Source::File { words, len, .. } => {
                // SAFETY: any u64 is a valid sequence of 8 u8s, and u8 has alignment 1, so the
                // middle part is the whole buffer.
                let (head, bytes, _) = unsafe { words.align_to::<u8>() };
                debug_assert!(head.is_empty());
                &bytes[..*len]
            }
        }
    }

    /// Whether the programs carry CO-RE relocations, which need the kernel's BTF. Ours do
    /// not; an object that cannot even be parsed counts as needing it, and the load then
    /// reports why.
    pub(super) fn needs_kernel_btf(&self) -> bool {
        aya_obj::Object::parse(self.bytes()).map_or(true, |o| o.has_btf_relocations())
    }
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Source::Embedded => f.write_str("mesh-redirect (built in)"),
            Source::File { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Object({self})")
    }
}

/// The object built by `build.rs`.
pub(super) fn embedded() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh-redirect.o"))
}

/// Checks the ELF header: magic, 64-bit, little-endian, machine `EM_BPF`.
fn check_elf(bytes: &[u8]) -> Result<(), &'static str> {
    if bytes.len() < 64 {
        return Err("shorter than an ELF header");
    }
    if &bytes[..4] != b"\x7fELF" {
        return Err("no ELF magic number");
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF file");
    }
    if u16::from_le_bytes([bytes[18], bytes[19]]) != EM_BPF {
        return Err("an ELF file for another machine than BPF");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_object_passes_the_check() {
        assert_eq!(check_elf(embedded()), Ok(()));
    }

    #[test]
    fn the_embedded_object_loads_without_the_kernels_btf() {
        // Pods' copies then share one loader that never parses the kernel's BTF.
        assert!(!Object::embedded().needs_kernel_btf());
    }

    #[test]
    fn a_corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corrupt.o");
        std::fs::write(&path, b"not an object at all, just some text").unwrap();
        let err = Object::from_file(&path).expect_err("text is not an object");
        assert!(err.to_string().contains("corrupt.o"), "{err}");

        let missing = dir.path().join("missing.o");
        let err = Object::from_file(&missing).expect_err("no such file");
        assert!(err.to_string().contains("missing.o"), "{err}");
    }

    #[test]
    fn a_file_is_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy.o");
        std::fs::write(&path, embedded()).unwrap();
        let object = Object::from_file(&path).unwrap();
        assert_eq!(object.bytes(), embedded());
        assert_eq!(object.to_string(), path.display().to_string());
    }
}
