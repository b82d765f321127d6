//! Child processes that are killed when their guard drops, with their
//! output lines collected in the background.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};

use crate::poll;

/// Lines a child wrote, each with when it was read, shared with the
/// thread reading them.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<(SystemTime, String)>>>);

impl Lines {
    fn follow(&self, reader: impl std::io::Read + Send + 'static) {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                let read_at = SystemTime::now();
                if let Ok(mut lines) = lines.lock() {
                    lines.push((read_at, line));
                }
            }
        });
    }

    /// The lines that parse as JSON, each with the wall-clock time it was
    /// read: an upper bound of when the child printed it.
    pub fn timed_json(&self) -> Vec<(SystemTime, serde_json::Value)> {
        let lines = self.0.lock().map(|lines| lines.clone()).unwrap_or_default();
        lines
            .into_iter()
            .filter_map(|(read_at, line)| Some((read_at, serde_json::from_str(&line).ok()?)))
            .collect()
    }

    /// The lines that parse as JSON.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.snapshot()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|lines| lines.iter().map(|(_, line)| line.clone()).collect())
            .unwrap_or_default()
    }

    /// Waits for a line containing `needle`; returns it.
    pub fn wait_for_containing(&self, needle: &str, timeout: Duration) -> Result<String> {
        poll::until(&format!("a line containing {needle:?}"), timeout, || {
            Ok(self
                .snapshot()
                .into_iter()
                .find(|line| line.contains(needle)))
        })
        .with_context(|| format!("output so far: {:?}", self.snapshot()))
    }

    /// Waits for a line starting with `prefix`; returns it.
    pub fn wait_for(&self, prefix: &str, timeout: Duration) -> Result<String> {
        poll::until(&format!("a line starting {prefix:?}"), timeout, || {
            Ok(self
                .snapshot()
                .into_iter()
                .find(|line| line.starts_with(prefix)))
        })
        .with_context(|| format!("output so far: {:?}", self.snapshot()))
    }
}

/// A running child, killed (SIGKILL) and reaped on drop unless it was
/// stopped before.
pub struct Process {
    child: Child,
    stdin: Option<ChildStdin>,
    pub stdout: Lines,
    pub stderr: Lines,
    name: String,
}

impl Process {
    pub fn spawn(name: &str, mut command: Command) -> Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let (stdout, stderr) = (Lines::default(), Lines::default());
        if let Some(out) = child.stdout.take() {
            stdout.follow(out);
        }
        if let Some(err) = child.stderr.take() {
            stderr.follow(err);
        }
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            stdin,
            stdout,
            stderr,
            name: name.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing to {}", self.name))
    }

    /// Sends `signal` and waits up to `timeout` for the exit; returns the
    /// exit code (`None` if killed by a signal).
    pub fn stop(&mut self, signal: i32, timeout: Duration) -> Result<Option<i32>> {
        if let Some(status) = self.child.try_wait()? {
            // Already reaped: its pid may belong to someone else by now.
            return Ok(status.code());
        }
        // SAFETY: kill() on our own child's pid; the child is not yet reaped,
        // so the pid cannot belong to another process.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = poll::until(&format!("{} to exit", self.name), timeout, || {
            Ok(self.child.try_wait()?)
        })?;
        Ok(status.code())
    }

    /// Exit status if the child has exited.
    pub fn try_exit_code(&mut self) -> Result<Option<Option<i32>>> {
        Ok(self.child.try_wait()?.map(|status| status.code()))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
