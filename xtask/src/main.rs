//! `cargo xtask <task>`: the project's tasks.
//!
//! - `setup`: installs what is missing on a fresh machine (idempotent).
//! - `demo`: sets up, builds, and runs the local demo (the README's first command).
//! - `test`: builds the binaries and runs every test (the README's second command).
//! - `bench`: whole-system benchmarks as ratios against direct TCP in the same run.

mod bench;
mod demo;
mod setup;

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::Command;

const USAGE: &str = "usage: cargo xtask <setup | build-ebpf | demo [--no-setup] | test | bench [--rounds N] [--mode shared|dedicated|waypoint] [--only METRIC]>";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    // Ctrl-C: undo what the guards would have undone, then leave.
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: cleaning up");
        mesh_tests::cleanup::run_all();
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;
    match args.first().map(String::as_str) {
        Some("setup") => setup::run(),
        Some("demo") => {
            if !rest.iter().any(|a| a == "--no-setup") {
                setup::run()?;
            }
            demo::run()
        }
        Some("test") => test(),
        Some("bench") => {
            let mut rounds = 3;
            let mut modes = vec!["shared", "dedicated"];
            let mut only = None;
            let mut it = rest.iter();
            while let Some(flag) = it.next() {
                match (flag.as_str(), it.next()) {
                    ("--rounds", Some(n)) => rounds = n.parse().context("--rounds")?,
                    ("--mode", Some(m))
                        if ["shared", "dedicated", "waypoint"].contains(&m.as_str()) =>
                    {
                        modes = vec![m.as_str()]
                    }
                    ("--only", Some(m)) => {
                        anyhow::ensure!(
                            bench::METRICS.contains(&m.as_str()),
                            "--only {m}: not one of {}",
                            bench::METRICS.join(", ")
                        );
                        only = Some(m.as_str())
                    }
                    _ => anyhow::bail!("{USAGE}"),
                }
            }
            anyhow::ensure!(
                only.is_none() || !modes.contains(&"waypoint"),
                "--only is for the shared and dedicated modes; the waypoint's bench has one measurement"
            );
            bench::run(rounds, &modes, only)
        }
        Some("build-ebpf") => build_ebpf(),
        _ => anyhow::bail!("{USAGE}"),
    }
}

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

/// Runs `cmd`, failing if it fails.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// Builds the agent and the waypoint in `profile` and returns the folder that holds them.
fn build(release: bool) -> anyhow::Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "-p", "ztunnel", "-p", "waypoint", "--bins"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" }))
}

/// Builds the eBPF object alone, where ztunnel's build script also puts it.
fn build_ebpf() -> anyhow::Result<()> {
    let target = root().join("target").join("ebpf");
    run(Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(root().join("ebpf-programs").join("redirect"))
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS"))?;
    println!(
        "eBPF object: {}",
        target
            .join("bpfel-unknown-none/release/mesh-redirect")
            .display()
    );
    Ok(())
}

/// Every test: unit, protocol and end-to-end (which need root).
fn test() -> anyhow::Result<()> {
    mesh_tests::require_root();
    // Everything at once, with the features `cargo test --workspace` resolves, so that the
    // test run reuses these builds instead of compiling the dependencies a second time.
    run(cargo().args(["build", "--workspace", "--all-targets"]))?;
    run(cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("MESH_BIN_DIR", root().join("target").join("debug")))
}
