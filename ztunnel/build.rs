//! Builds the eBPF object (`ebpf-programs/redirect`) so that a plain `cargo build` of ztunnel
//! embeds it (`src/redirect/mod.rs` includes `$OUT_DIR/mesh-redirect.o`).
//!
//! The object is built by a nested `rustup run nightly cargo build --release` in the eBPF crate
//! (its `.cargo/config.toml` selects `bpfel-unknown-none`, `-Z build-std=core` and
//! `bpf-linker`), with `<workspace target>/ebpf` as its target directory so that debug and release
//! builds of ztunnel share one eBPF build. What it needs (the nightly toolchain with `rust-src`,
//! `bpf-linker` built for LLVM 22) is installed by `cargo xtask setup`.

use std::{
    env,
    ffi::OsString,
    fs,
    path::PathBuf,
    process::{self, Command},
};

/// The `[[bin]]` name of the eBPF crate, which is the object's file name.
const BIN: &str = "mesh-redirect";
/// The eBPF target, as in `ebpf-programs/redirect/.cargo/config.toml`.
const BPF_TARGET: &str = "bpfel-unknown-none";

/// Variables cargo sets for this build script (or inherits from the outer build) that would
/// change what the nested cargo builds, or with which compiler.
const REMOVED_VARS: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_LINKER",
    "RUSTDOC",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_RUSTC",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTUP_TOOLCHAIN",
    "CARGO",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_CRATE_NAME",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
];
/// Prefixes of variables cargo sets for this build script from ztunnel's own package and host
/// target (`CARGO_CFG_TARGET_ARCH`, `CARGO_FEATURE_*`, ...): the nested build must compute its
/// own, and a leftover one (say `CARGO_CFG_BPF_TARGET_ARCH`) would be taken for its own.
const REMOVED_PREFIXES: &[&str] = &[
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let ebpf_programs = manifest_dir.join("../ebpf-programs");
    let crate_dir = ebpf_programs.join("redirect");

    for path in [
        crate_dir.join("src"),
        crate_dir.join("Cargo.toml"),
        crate_dir.join("Cargo.lock"),
        crate_dir.join("rust-toolchain.toml"),
        crate_dir.join(".cargo/config.toml"),
        ebpf_programs.join("common/src"),
        ebpf_programs.join("common/Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }

    // OUT_DIR is `<target>/<profile>/build/ztunnel-<hash>/out`.
    let Some(target_dir) = out_dir.ancestors().nth(4) else {
        fail(
            &format!(
                "cannot derive the target directory from OUT_DIR {}",
                out_dir.display()
            ),
            None,
        );
    };
    let ebpf_target_dir = target_dir.join("ebpf");

    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--release",
        "--target-dir",
    ])
    .arg(&ebpf_target_dir)
    .current_dir(&crate_dir);
    for (key, _) in env::vars_os() {
        if removed(&key) {
            cmd.env_remove(&key);
        }
    }
    let shown = format!(
        "rustup run nightly cargo build --release --target-dir {} (in {})",
        ebpf_target_dir.display(),
        crate_dir.display()
    );
    let output = match cmd.output() {
        Ok(output) => output,
        Err(err) => fail(&format!("could not run `{shown}`: {err}"), None),
    };
    if !output.status.success() {
        fail(
            &format!(
                "building the eBPF programs failed ({}): `{shown}`",
                output.status
            ),
            Some(&String::from_utf8_lossy(&output.stderr)),
        );
    }

    let object = ebpf_target_dir.join(BPF_TARGET).join("release").join(BIN);
    let dest = out_dir.join("mesh-redirect.o");
    if let Err(err) = fs::copy(&object, &dest) {
        fail(
            &format!(
                "copying the eBPF object {} to {} failed: {err}",
                object.display(),
                dest.display()
            ),
            None,
        );
    }
}

/// Whether the nested cargo must not inherit the variable `key`.
fn removed(key: &OsString) -> bool {
    let Some(key) = key.to_str() else {
        return false;
    };
    REMOVED_VARS.contains(&key) || REMOVED_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Fails the build with `what`, the nested cargo's stderr if any, and the way to fix the usual
/// cause.
fn fail(what: &str, stderr: Option<&str>) -> ! {
    eprintln!("error: {what}");
    if let Some(stderr) = stderr {
        eprintln!("--- stderr of the nested cargo ---");
        eprintln!("{}", stderr.trim_end());
        eprintln!("--- end of stderr ---");
    }
    eprintln!(
        "hint: the eBPF build needs the nightly toolchain with rust-src, bpf-linker and LLVM 22; \
         run `cargo xtask setup` to install what is missing"
    );
    process::exit(1);
}
