//! build, run and test.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::setup::{Project, is_root};

/// Builds the `connmon` binary; returns its path.
pub fn build(project: &Project, release: bool) -> Result<PathBuf> {
    let mut cargo = cargo(project);
    cargo.args(["build", "--package", "connmon", "--bin", "connmon"]);
    if release {
        cargo.arg("--release");
    }
    run_checked(&mut cargo, "cargo build")?;
    Ok(project.root.join("target").join(if release { "release" } else { "debug" }).join("connmon"))
}

/// Builds in release mode and runs connmon with `args`; connmon's exit code
/// becomes ours.
pub fn run(project: &Project, args: &[String]) -> Result<()> {
    let binary = build(project, true)?;
    if !is_root() {
        eprintln!("note: connmon needs root (or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN) to load its programs");
    }
    let status = Command::new(&binary).args(args).status().with_context(|| format!("running {}", binary.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Unit tests of every crate, then the kernel tests in `tests/`, which need
/// root: they create network namespaces and load BPF programs. Without root
/// this fails rather than skipping them.
pub fn test(project: &Project, args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the kernel tests need root (network namespaces, BPF): run `cargo xtask test` as root");
    }
    let binary = build(project, false)?;
    let mut cargo = cargo(project);
    // The kernel tests share the machine's tracepoints and namespaces:
    // run them one at a time.
    cargo
        .args(["test", "--workspace", "--exclude", "monitor-ebpf"])
        .args(args)
        .env("CONNMON_BIN", &binary)
        .env("RUST_TEST_THREADS", "1");
    run_checked(&mut cargo, "cargo test")
}

fn cargo(project: &Project) -> Command {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.current_dir(&project.root).env("PATH", project.path_env());
    cargo
}

fn run_checked(command: &mut Command, what: &str) -> Result<()> {
    let status = command.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
