//! The tools compared on the retransmit workload: connmon and its peers,
//! each started, awaited until attached, and stopped by a guard.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use connmon_tests::connmon::Daemon;

use super::env::{Scratch, interrupt, pause};

/// The port the retransmit workload uses (iperf3's).
pub const WORKLOAD_PORT: u16 = 5201;

/// Debian's `tcpretrans.bt` uses a kprobe, which this kernel lacks; the
/// same output from the tracepoint, with the same state names.
const BPFTRACE_PRINT: &str = r#"BEGIN
{
	@tcp_states[1] = "ESTABLISHED";
	@tcp_states[2] = "SYN_SENT";
	@tcp_states[3] = "SYN_RECV";
	@tcp_states[4] = "FIN_WAIT1";
	@tcp_states[5] = "FIN_WAIT2";
	@tcp_states[6] = "TIME_WAIT";
	@tcp_states[7] = "CLOSE";
	@tcp_states[8] = "CLOSE_WAIT";
	@tcp_states[9] = "LAST_ACK";
	@tcp_states[10] = "LISTEN";
	@tcp_states[11] = "CLOSING";
	@tcp_states[12] = "NEW_SYN_RECV";
	printf("ready\n");
	printf("%-8s %-8s %20s %21s %6s\n", "TIME", "PID", "LADDR:LPORT", "RADDR:RPORT", "STATE");
}

tracepoint:tcp:tcp_retransmit_skb
{
	time("%H:%M:%S ");
	if (args->family == 2) {
		printf("%-8d %14s:%-6d %14s:%-6d %6s\n", pid, ntop(args->saddr), args->sport,
		    ntop(args->daddr), args->dport, @tcp_states[args->state]);
	} else {
		printf("%-8d %14s:%-6d %14s:%-6d %6s\n", pid, ntop(args->saddr_v6), args->sport,
		    ntop(args->daddr_v6), args->dport, @tcp_states[args->state]);
	}
}

END
{
	clear(@tcp_states);
}
"#;

/// Per-connection counts in a kernel map, printed at exit (like bcc's `-c`).
const BPFTRACE_COUNT: &str = r#"BEGIN
{
	printf("ready\n");
}

tracepoint:tcp:tcp_retransmit_skb
{
	@retransmits[ntop(args->saddr_v6), args->sport, ntop(args->daddr_v6), args->dport] = count();
}
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tool {
    None,
    /// The workload's port unwatched: retransmits counted per owner
    /// (process, cgroup, kind) in a kernel map, no event.
    ConnmonCounted,
    /// The workload's port watched: an event with the owner per retransmit.
    ConnmonEvents,
    Bcc,
    BccCount,
    BpftracePrint,
    BpftraceCount,
}

impl Tool {
    pub const ALL: [Tool; 7] = [
        Tool::None,
        Tool::ConnmonCounted,
        Tool::ConnmonEvents,
        Tool::Bcc,
        Tool::BccCount,
        Tool::BpftracePrint,
        Tool::BpftraceCount,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Tool::None => "none",
            Tool::ConnmonCounted => "connmon (port not watched: counted per owner)",
            Tool::ConnmonEvents => "connmon (port watched: busy connections' retransmits counted)",
            Tool::Bcc => "bcc tcpretrans",
            Tool::BccCount => "bcc tcpretrans -c",
            Tool::BpftracePrint => "bpftrace tcpretrans (tracepoint, printing)",
            Tool::BpftraceCount => "bpftrace per-connection count",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Tool::None => "none",
            Tool::ConnmonCounted => "connmon counted",
            Tool::ConnmonEvents => "connmon events",
            Tool::Bcc => "bcc",
            Tool::BccCount => "bcc -c",
            Tool::BpftracePrint => "bpftrace print",
            Tool::BpftraceCount => "bpftrace count",
        }
    }

    pub fn is_connmon(self) -> bool {
        matches!(self, Tool::ConnmonCounted | Tool::ConnmonEvents)
    }
}

/// A running tool; dropping it stops the tool.
pub enum Attached {
    None,
    Connmon(Daemon),
    Peer(Peer),
}

impl Attached {
    pub fn pid(&self) -> Option<u32> {
        match self {
            Attached::None => None,
            Attached::Connmon(daemon) => Some(daemon.pid()),
            Attached::Peer(peer) => Some(peer.child.id()),
        }
    }

    pub fn daemon(&self) -> Option<&Daemon> {
        match self {
            Attached::Connmon(daemon) => Some(daemon),
            _ => None,
        }
    }
}

/// Starts `tool` and returns once its programs are attached.
pub fn attach(tool: Tool, scratch: &Scratch, kernel_source: &Path) -> Result<Attached> {
    let port = WORKLOAD_PORT.to_string();
    let attached = match tool {
        Tool::None => return Ok(Attached::None),
        // 6379 is the default; the workload's port is not among the watched.
        Tool::ConnmonCounted => Attached::Connmon(Daemon::start(&["--ports", "6379"])?),
        Tool::ConnmonEvents => Attached::Connmon(Daemon::start(&["--ports", &port])?),
        Tool::Bcc | Tool::BccCount => {
            let mut command = Command::new("tcpretrans-bpfcc");
            if tool == Tool::BccCount {
                command.arg("-c");
            }
            // Stock bcc finds no headers for this kernel (see env.rs);
            // Python buffers a pipe's output, which would hide the banner.
            command
                .env("BCC_KERNEL_SOURCE", kernel_source)
                .env("PYTHONUNBUFFERED", "1");
            Attached::Peer(Peer::start(
                tool.short(),
                command,
                scratch,
                "Tracing retransmits",
            )?)
        }
        Tool::BpftracePrint | Tool::BpftraceCount => {
            let script = scratch.path(if tool == Tool::BpftracePrint {
                "tcpretrans-tp.bt"
            } else {
                "tcpretrans-count.bt"
            });
            std::fs::write(
                &script,
                if tool == Tool::BpftracePrint {
                    BPFTRACE_PRINT
                } else {
                    BPFTRACE_COUNT
                },
            )?;
            let mut command = Command::new("bpftrace");
            // Unbuffered, as on a terminal (line by line).
            command.args(["-B", "none"]).arg(&script);
            Attached::Peer(Peer::start(tool.short(), command, scratch, "ready")?)
        }
    };
    // bcc opens its perf buffer just after printing its banner.
    pause(Duration::from_secs(1))?;
    Ok(attached)
}

/// A peer tool writing to a file (as it would to a terminal or log), stopped
/// with SIGINT (then SIGKILL) on drop.
pub struct Peer {
    child: Child,
    name: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Peer {
    fn start(name: &str, mut command: Command, scratch: &Scratch, ready: &str) -> Result<Self> {
        let tag = name.replace([' ', '-'], "_");
        let stdout = scratch.path(&format!("{tag}.out"));
        let stderr = scratch.path(&format!("{tag}.err"));
        command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&stderr)?);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut peer = Self {
            child,
            name: name.to_string(),
            stdout,
            stderr,
        };
        // bcc compiles its program with clang first: slow on a busy VM.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            interrupt::check()?;
            if peer.head().contains(ready) {
                return Ok(peer);
            }
            if let Some(status) = peer.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before attaching: {}",
                    peer.name,
                    std::fs::read_to_string(&peer.stderr).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("{} did not attach within 180 s", peer.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The start of the tool's output, where its banner is.
    fn head(&self) -> String {
        use std::io::Read;
        let mut head = vec![0u8; 4096];
        let read = std::fs::File::open(&self.stdout)
            .and_then(|mut file| file.read(&mut head))
            .unwrap_or(0);
        String::from_utf8_lossy(&head[..read]).into_owned()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill() on our own unreaped child's pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
