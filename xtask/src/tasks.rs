//! build, run and test.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

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
    Ok(project
        .target_dir()
        .join(if release { "release" } else { "debug" })
        .join("connmon"))
}

/// Builds in release mode and runs connmon with `args`; connmon's exit code
/// becomes ours.
pub fn run(project: &Project, args: &[String]) -> Result<()> {
    let binary = build(project, true)?;
    if !is_root() {
        eprintln!(
            "note: connmon needs root (or CAP_BPF and CAP_PERFMON; docs/deploy.md lists the rest) to load its programs"
        );
    }
    let status = Command::new(&binary)
        .args(args)
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Unit tests of every crate, then the kernel tests in `tests/`, which need
/// root: they create network namespaces and load BPF programs. Without root
/// this fails rather than skipping them.
pub fn test(project: &Project, args: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "the kernel tests need root (network namespaces, BPF): run `cargo xtask test` as root"
        );
    }
    let binary = build(project, false)?;
    // Packaged once for the whole run (tests/tests/package.rs installs it).
    let package = crate::deb::build(
        project,
        &binary,
        &project.target_dir().join("debian-test"),
        crate::deb::Compression::Fast,
    )?;
    // And the minimal image (tests/tests/image.rs runs it).
    let image = crate::minimal_image::build(
        &binary,
        &project.target_dir().join("image-test"),
        "connmon:test",
    )?;
    let mut cargo = cargo(project);
    // The kernel tests share the machine's tracepoints and namespaces:
    // run them one at a time.
    cargo
        // Every test binary runs even after one fails: CI shows every failure.
        .args([
            "test",
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            "monitor-ebpf",
        ])
        .args(args)
        .env("CONNMON_BIN", &binary)
        .env("CONNMON_DEB", &package)
        .env("CONNMON_IMAGE", &image.archive)
        .env("RUST_TEST_THREADS", "1")
        .stdout(Stdio::piped());
    let mut child = cargo.spawn().context("starting cargo test")?;
    let mut totals = TestTotals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            totals.add_line(&line);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    // The whole suite (no filter) includes connmon on each kernel of the
    // VM matrix.
    if args.is_empty() {
        match crate::vm::vm_test(project, &binary, &crate::vm::default_matrix()) {
            Ok(()) => totals.passed += 1,
            Err(error) => {
                eprintln!("vm-test: {error:#}");
                totals.failed += 1;
            }
        }
    }
    // One closing line for the whole suite, across every test binary.
    println!(
        "summary: {} passed, {} failed",
        totals.passed, totals.failed
    );
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    if totals.failed > 0 {
        bail!("{} failed", totals.failed);
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// Sums libtest's `test result:` lines.
#[derive(Default)]
struct TestTotals {
    passed: u64,
    failed: u64,
}

impl TestTotals {
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            if let (Some(count), Some(what)) = (words.next(), words.next()) {
                let count: u64 = count.parse().unwrap_or(0);
                match what {
                    "passed" => self.passed += count,
                    "failed" => self.failed += count,
                    _ => {}
                }
            }
        }
    }
}

/// The soak run: a release connmon watching `churn_per_second` short
/// connections per second for `minutes`, with a storm every
/// `storm_every_seconds`; fails if memory grows, tables leak or a storm
/// goes unreported. Needs root, like the kernel tests.
pub fn soak(
    project: &Project,
    minutes: u32,
    churn_per_second: u32,
    storm_every_seconds: u32,
) -> Result<()> {
    if !is_root() {
        bail!("the soak run needs root (network namespaces, BPF): run `cargo xtask soak` as root");
    }
    let connmon = build(project, true)?;
    let mut cargo = cargo(project);
    cargo.args(["build", "--release", "--package", "connmon-tests", "--bins"]);
    run_checked(&mut cargo, "building the soak driver")?;
    let mut soak = Command::new(project.target_dir().join("release/connmon-soak"));
    soak.args([
        minutes.to_string(),
        churn_per_second.to_string(),
        storm_every_seconds.to_string(),
    ])
    .env("CONNMON_BIN", &connmon);
    run_checked(&mut soak, "the soak run")
}

/// Installs cargo-fuzz into the project's tool cache when missing, then
/// runs every fuzz target for `seconds`. A crash fails the task and leaves
/// its input under fuzz/artifacts/ for a regression test.
pub fn fuzz(project: &Project, seconds: u32) -> Result<()> {
    let cargo_fuzz = project.tools_bin().join("cargo-fuzz");
    if !cargo_fuzz.is_file() {
        eprintln!("fuzz: installing cargo-fuzz");
        let mut install = cargo(project);
        install
            .args(["install", "cargo-fuzz", "--locked", "--root"])
            .arg(project.cache().join("tools"));
        run_checked(&mut install, "cargo install cargo-fuzz")?;
    }
    for target in ["decode", "config", "http"] {
        let corpus = project.root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        // libFuzzer's sanitizer flags need nightly; rustup picks it.
        let mut run = Command::new("rustup");
        run.current_dir(project.root.join("fuzz"))
            .env("PATH", project.path_env())
            .args(["run", "nightly", "cargo", "fuzz", "run", target])
            .arg(&corpus)
            .args(["--", &format!("-max_total_time={seconds}")]);
        run_checked(&mut run, &format!("fuzzing {target}"))?;
    }
    Ok(())
}

fn cargo(project: &Project) -> Command {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(&project.root)
        .env("PATH", project.path_env());
    cargo
}

pub(crate) fn run_checked(command: &mut Command, what: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::TestTotals;

    #[test]
    fn sums_libtest_result_lines() {
        let mut totals = TestTotals::default();
        totals.add_line("test result: ok. 17 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.75s");
        totals.add_line(
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        totals.add_line("running 3 tests");
        assert_eq!((totals.passed, totals.failed), (19, 1));
    }
}
