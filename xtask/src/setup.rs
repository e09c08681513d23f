//! Installs what the project needs on a fresh machine of this kind, checking first and
//! installing only what is missing: Debian packages for the tests and demo, and the eBPF
//! toolchain of ../shared/TOOLCHAIN.md (LLVM 22, bpf-linker, nightly rust-src).

use crate::run as exec;
use anyhow::Context;
use std::path::PathBuf;
use std::process::Command;

/// Debian packages: network namespaces, capture, the demo's client, eBPF inspection and the
/// LLVM that bpf-linker links against.
const PACKAGES: &[&str] = &[
    "iproute2",
    "tcpdump",
    "curl",
    "procps",
    "bpftool",
    "llvm-22-dev",
    "libclang-22-dev",
];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin").join(name)
}

pub fn run() -> anyhow::Result<()> {
    mesh_tests::require_root();
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("setup: Debian packages present");
    } else {
        println!("setup: installing {}", missing.join(" "));
        exec(Command::new("apt-get").arg("update").arg("-qq"))?;
        exec(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }

    let toolchains = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("rustup")?;
    if !String::from_utf8_lossy(&toolchains.stdout).contains("nightly") {
        println!("setup: installing the nightly toolchain (for eBPF)");
        exec(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup")?;
    if !String::from_utf8_lossy(&components.stdout).contains("rust-src") {
        println!("setup: adding rust-src to nightly (for -Z build-std)");
        exec(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    if cargo_bin("bpf-linker").exists() {
        println!("setup: bpf-linker present");
    } else {
        println!("setup: building bpf-linker against LLVM 22 (a minute or two)");
        // llvm-sys must find LLVM 22's llvm-config, not the distribution default.
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        exec(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("PATH", path)
                .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"),
        )?;
    }
    println!("setup: done");
    Ok(())
}
