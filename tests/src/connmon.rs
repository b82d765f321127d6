//! A running connmon, its JSON output parsed as it arrives.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::process::Process;

/// The binary under test: `CONNMON_BIN` (set by `cargo xtask test`), else
/// the debug build next to this test.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CONNMON_BIN") {
        return PathBuf::from(path);
    }
    let mut path = std::env::current_exe().unwrap_or_default();
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.join("connmon")
}

/// `connmon trace --json ...`, stopped with SIGINT on drop.
pub struct Trace {
    process: Process,
}

impl Trace {
    /// Starts the trace and waits until its programs are attached.
    pub fn start(args: &[&str]) -> Result<Self> {
        let mut command = Command::new(binary());
        command.arg("trace").arg("--json").args(args).env("RUST_LOG", "info");
        let process = Process::spawn("connmon trace", command)?;
        process
            .stderr
            .wait_for_containing("tracing", Duration::from_secs(60))
            .context("connmon trace did not get ready")?;
        Ok(Self { process })
    }

    /// Every JSON record printed so far.
    pub fn records(&self) -> Vec<Value> {
        self.process.stdout.snapshot().iter().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.process.stderr.snapshot()
    }

    /// Stops with SIGINT; returns the exit code.
    pub fn stop(mut self) -> Result<Option<i32>> {
        self.process.stop(libc::SIGINT, Duration::from_secs(10))
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.process.stop(libc::SIGINT, Duration::from_secs(5));
    }
}
