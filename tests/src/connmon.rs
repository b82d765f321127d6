//! A running connmon, its JSON output parsed as it arrives.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::process::Process;

/// The binary under test: `CONNMON_BIN` (set by `cargo xtask test`), else
/// the build next to this test.
pub fn binary() -> PathBuf {
    match std::env::var_os("CONNMON_BIN") {
        Some(path) => PathBuf::from(path),
        None => built_binary("connmon"),
    }
}

/// A command that runs connmon as user nobody holding exactly `caps`
/// (setpriv syntax, e.g. `+bpf,+perfmon`; empty for none), from a copy in a
/// scratch directory nobody can enter. The caller removes the directory.
pub fn as_nobody(caps: &str, tag: &str) -> Result<(Command, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("cmt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let copy = dir.join("connmon");
    std::fs::copy(binary(), &copy)?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
    let mut command = Command::new("setpriv");
    command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    if !caps.is_empty() {
        command.args([
            format!("--inh-caps={caps}"),
            format!("--ambient-caps={caps}"),
        ]);
    }
    command.arg(&copy);
    Ok((command, dir))
}

/// `command` run in a mount namespace of its own whose `/proc` is mounted
/// afresh with `options` (e.g. `hidepid=2`, as hardened hosts mount it);
/// the host's `/proc` is left as it is.
pub fn with_proc_mounted(command: Command, options: &str) -> Command {
    let mut wrapped = Command::new("unshare");
    wrapped.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!("mount -t proc -o {options} proc /proc && exec \"$@\""),
        "sh",
    ]);
    wrapped.arg(command.get_program()).args(command.get_args());
    wrapped
}

/// A command that runs connmon the way a Kubernetes pod of
/// deploy/kubernetes runs it: user nobody, no capabilities of its own, a
/// copy of the binary carrying `file_caps` as file capabilities (setcap
/// syntax, e.g. `cap_bpf,cap_perfmon+p`, as the Containerfile sets them),
/// and a bounding set of exactly `granted` (setpriv syntax, e.g.
/// `+bpf,+perfmon`: the pod's `capabilities.add`). The caller removes the
/// returned directory.
pub fn as_nobody_in_pod(file_caps: &str, granted: &str, tag: &str) -> Result<(Command, PathBuf)> {
    let (_, dir) = as_nobody("", tag)?;
    let copy = dir.join("connmon");
    let status = Command::new("setcap")
        .arg(file_caps)
        .arg(&copy)
        .status()
        .context("running setcap (Debian libcap2-bin)")?;
    anyhow::ensure!(status.success(), "setcap {file_caps} failed");
    let mut command = Command::new("setpriv");
    command.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ]);
    // The bounding set is what the pod grants; everything else is dropped.
    command.arg(if granted.is_empty() {
        "--bounding-set=-all".to_string()
    } else {
        format!("--bounding-set=-all,{granted}")
    });
    command.arg(&copy);
    Ok((command, dir))
}

/// A binary of this workspace's build, next to the running test
/// (`target/<profile>/<name>`).
pub fn built_binary(name: &str) -> PathBuf {
    let mut path = std::env::current_exe().unwrap_or_default();
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.join(name)
}

/// Findings of one kind in one network namespace, the first one as soon as
/// it is printed.
pub fn first_finding(
    connmon: &Daemon,
    event: &str,
    netns: u32,
    timeout: Duration,
) -> Result<Value> {
    crate::poll::until(event, timeout, || {
        Ok(connmon.findings(event, netns).into_iter().next())
    })
    .with_context(|| {
        format!(
            "connmon stdout: {:?}\nconnmon stderr: {:?}",
            connmon.records(),
            connmon.stderr()
        )
    })
}

/// `first_finding`, which must name the process `pid` (the one whose
/// connection the test broke).
pub fn first_finding_of(
    connmon: &Daemon,
    event: &str,
    netns: u32,
    pid: u32,
    timeout: Duration,
) -> Result<Value> {
    let finding = first_finding(connmon, event, netns, timeout)?;
    anyhow::ensure!(
        finding["pid"] == pid,
        "{event} names another process than {pid}: {finding}"
    );
    Ok(finding)
}

/// `connmon trace --json ...`, stopped with SIGINT on drop.
pub struct Trace {
    process: Process,
}

impl Trace {
    /// Starts the trace and waits until its programs are attached.
    pub fn start(args: &[&str]) -> Result<Self> {
        let mut command = Command::new(binary());
        command
            .arg("trace")
            .arg("--json")
            .args(args)
            .env("RUST_LOG", "info");
        let process = Process::spawn("connmon trace", command)?;
        process
            .stderr
            .wait_for_containing("tracing", Duration::from_secs(60))
            .context("connmon trace did not get ready")?;
        Ok(Self { process })
    }

    /// Every JSON record printed so far.
    pub fn records(&self) -> Vec<Value> {
        self.process.stdout.json()
    }

    /// Holds the trace still (SIGSTOP) until the guard drops (SIGCONT),
    /// as `Daemon::pause`.
    pub fn pause(&self) -> Result<Paused> {
        Paused::new(self.process.pid())
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

/// `connmon run` with JSON findings on stdout and its HTTP endpoints on a
/// free loopback port; stopped with SIGINT on drop.
pub struct Daemon {
    process: Process,
    pub listen: std::net::SocketAddr,
    /// A directory to remove once the daemon has stopped.
    scratch: Option<PathBuf>,
}

impl Daemon {
    /// Starts the daemon and waits until its programs are attached.
    pub fn start(args: &[&str]) -> Result<Self> {
        Self::start_with(Command::new(binary()), args)
    }

    /// Starts the daemon as user nobody holding exactly `caps` (setpriv
    /// syntax, e.g. `+bpf,+perfmon`), from a copy of the binary nobody can
    /// execute.
    pub fn start_as_nobody(caps: &str, args: &[&str]) -> Result<Self> {
        let (command, dir) = as_nobody(caps, "nobody")?;
        let mut daemon = Self::start_with(command, args)?;
        daemon.scratch = Some(dir);
        Ok(daemon)
    }

    /// Starts the daemon from `command` (e.g. from `as_nobody_in_pod`);
    /// `scratch` is removed once it has stopped.
    pub fn start_command(command: Command, args: &[&str], scratch: PathBuf) -> Result<Self> {
        let mut daemon = Self::start_with(command, args)?;
        daemon.scratch = Some(scratch);
        Ok(daemon)
    }

    /// Starts the daemon with findings as text lines for people
    /// (`--output-format text`); read them with `stdout`.
    pub fn start_text(args: &[&str]) -> Result<Self> {
        Self::start_in_format(Command::new(binary()), "text", args)
    }

    fn start_with(command: Command, args: &[&str]) -> Result<Self> {
        Self::start_in_format(command, "json", args)
    }

    fn start_in_format(mut command: Command, format: &str, args: &[&str]) -> Result<Self> {
        let listen = free_loopback_port()?;
        command
            .arg("run")
            .args(["--listen", &listen.to_string(), "--output-format", format])
            .args(args);
        command.env("RUST_LOG", "info");
        let process = Process::spawn("connmon run", command)?;
        process
            .stderr
            .wait_for_containing("watching for retransmit storms", Duration::from_secs(60))
            .context("connmon run did not get ready")?;
        Ok(Self {
            process,
            listen,
            scratch: None,
        })
    }

    /// Every finding printed so far.
    pub fn records(&self) -> Vec<Value> {
        self.process.stdout.json()
    }

    /// Every finding printed so far, with when the test read it.
    pub fn timed_records(&self) -> Vec<(std::time::SystemTime, Value)> {
        self.process.stdout.timed_json()
    }

    /// Findings of one kind in one network namespace.
    pub fn findings(&self, event: &str, netns: u32) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["event"] == event && r["netns"] == netns)
            .collect()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.process.stderr.snapshot()
    }

    /// Waits up to 10 s for a log line containing `needle`.
    pub fn process_stderr_wait(&self, needle: &str) -> Result<String> {
        self.process
            .stderr
            .wait_for_containing(needle, Duration::from_secs(10))
    }

    /// Every line printed on stdout so far, JSON or not.
    pub fn stdout(&self) -> Vec<String> {
        self.process.stdout.snapshot()
    }

    /// GET `path` from the daemon's HTTP server; returns the body.
    pub fn http_get(&self, path: &str) -> Result<String> {
        http_get(self.listen, path)
    }

    /// A sample of `/metrics`, e.g. `connmon_events_total{event="destroyed"}`;
    /// an error when the series is absent: a renamed or missing metric
    /// fails the test instead of reading as 0.
    pub fn metric(&self, series: &str) -> Result<f64> {
        self.metric_if_present(series)?
            .with_context(|| format!("{series} is not in connmon's /metrics"))
    }

    /// The sample, or `None` while the series has not appeared (a labelled
    /// series appears with its first count): for polls that wait for it.
    pub fn metric_if_present(&self, series: &str) -> Result<Option<f64>> {
        let body = self.http_get("/metrics")?;
        Ok(body.lines().find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        }))
    }

    /// The sum of every series of `family` in one scrape (0 when it has
    /// none yet: a labelled family appears with its first series).
    pub fn metric_sum(&self, family: &str) -> Result<f64> {
        let body = self.http_get("/metrics")?;
        Ok(body
            .lines()
            .filter(|line| {
                line.strip_prefix(family)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Waits until every record the kernel programs wrote so far has been
    /// processed or counted lost: what connmon will say about the past is
    /// said.
    pub fn drained(&self, timeout: Duration) -> Result<()> {
        let emitted = self.metric_sum("connmon_kernel_events_emitted_total")?;
        crate::poll::until("connmon to process every record", timeout, || {
            let done = self.metric_sum("connmon_events_total")?
                + self.metric_sum("connmon_lost_records_total")?;
            Ok((done >= emitted).then_some(()))
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Holds the daemon still (SIGSTOP) until the guard drops (SIGCONT):
    /// its reader falls behind as a CPU-starved connmon's would, while the
    /// kernel programs go on writing records.
    pub fn pause(&self) -> Result<Paused> {
        Paused::new(self.pid())
    }

    /// Stops with SIGINT; returns the exit code.
    pub fn stop(mut self) -> Result<Option<i32>> {
        self.process.stop(libc::SIGINT, Duration::from_secs(10))
    }

    /// Sends `signal` and waits up to `timeout` for the exit code; the
    /// output stays readable afterwards.
    pub fn signal(&mut self, signal: i32, timeout: Duration) -> Result<Option<i32>> {
        self.process.stop(signal, timeout)
    }
}

/// A stopped process, continued on drop.
pub struct Paused(libc::pid_t);

impl Paused {
    fn new(pid: u32) -> Result<Self> {
        let pid = libc::pid_t::try_from(pid)?;
        // SAFETY: kill(2) with a signal number; no memory is passed.
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            return Err(std::io::Error::last_os_error()).context("SIGSTOP");
        }
        Ok(Self(pid))
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: as in `new`.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.process.stop(libc::SIGINT, Duration::from_secs(5));
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn free_loopback_port() -> Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A minimal HTTP/1.0 GET on loopback: status 200 or an error.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {path}: {head}"
    );
    Ok(body.to_string())
}
