//! Does connmon, run with its defaults, switch on BPF run-time statistics
//! for the host? Another program (an empty one standing for another
//! agent's) is attached while connmon runs and traffic flows: its run
//! count and time must stay 0, as they do while statistics are off.
//! Runs before the bench switches statistics on for its own measurements.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
};

use anyhow::{Context, Result};
use connmon_tests::connmon::Daemon;

use super::floor::Floor;

#[derive(Clone, Debug)]
pub struct Verdict {
    pub untouched: bool,
    pub detail: String,
}

pub fn run() -> Result<Verdict> {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .context("reading kernel.bpf_stats_enabled")?;
    if sysctl.trim() != "0" {
        return Ok(Verdict {
            untouched: false,
            detail: "not measurable: this host has kernel.bpf_stats_enabled=1".into(),
        });
    }
    let other = Floor::attach(&["sock_send_length"])?;
    let daemon = Daemon::start(&[])?;
    let sends = loopback_traffic(2_000)?;
    let stats = other.stats();
    drop(daemon);
    let (runs, time) = stats.get("sock_send_length").copied().unwrap_or_default();
    Ok(Verdict {
        untouched: runs == 0 && time == 0,
        detail: format!(
            "another program on `sock_send_length`, {sends} sends while connmon ran with its defaults: {runs} runs and {time} ns accounted (statistics {})",
            if runs == 0 && time == 0 {
                "stayed off"
            } else {
                "were switched on"
            }
        ),
    })
}

/// `count` small writes and reads over a loopback connection.
fn loopback_traffic(count: u32) -> Result<u32> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    let mut byte = [0u8; 1];
    for _ in 0..count {
        client.write_all(b"x")?;
        server.read_exact(&mut byte)?;
    }
    Ok(count)
}
