//! Resident memory with many tracked sockets: connections opened on the
//! loopback of a namespace of its own, on watched ports, both ends held
//! open by this process; connmon tracks both ends of each.

use std::{
    net::{TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result};
use connmon_tests::{connmon::Daemon, netns::NetNs, poll};

use crate::bench::{
    env::{in_netns, interrupt},
    probe,
};

const PORTS: [u16; 4] = [7410, 7411, 7412, 7413];
pub const SIZES: [u64; 2] = [10_000, 100_000];

#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Sockets opened (both ends of `sockets / 2` connections).
    pub sockets: u64,
    /// connmon's own count of sockets in its userspace table.
    pub tracked: f64,
    pub idle_rss_kib: u64,
    pub rss_kib: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Results {
    pub samples: Vec<Sample>,
}

/// Opens `connections` loopback connections spread over `PORTS`; returns
/// both ends of each, and the listeners.
fn open(connections: u64) -> Result<(Vec<TcpListener>, Vec<TcpStream>)> {
    let listeners = PORTS
        .iter()
        .map(|port| TcpListener::bind(("127.0.0.1", *port)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut streams = Vec::with_capacity(2 * connections as usize);
    for index in 0..connections {
        if index % 1000 == 0 {
            interrupt::check()?;
        }
        let listener = &listeners[index as usize % listeners.len()];
        let client = TcpStream::connect(listener.local_addr()?)
            .with_context(|| format!("connection {index}"))?;
        let (server, _) = listener.accept()?;
        streams.push(client);
        streams.push(server);
    }
    Ok((listeners, streams))
}

pub fn run() -> Result<Results> {
    let ns = NetNs::create("bench-mem")?;
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    let ports = PORTS.map(|p| p.to_string()).join(",");
    let mut results = Results::default();
    for sockets in SIZES {
        interrupt::check()?;
        eprintln!("bench: memory with {sockets} sockets");
        let daemon = Daemon::start(&["--ports", &ports, "--socket-map-entries", "262144"])?;
        let idle_rss_kib = probe::resident_kib(daemon.pid())?;
        let name = ns.name().to_string();
        let held = in_netns(&name, move || open(sockets / 2))?;
        let tracked = poll::until(
            "connmon to track the sockets",
            Duration::from_secs(60),
            || {
                interrupt::check()?;
                let text = daemon.http_get("/metrics")?;
                let tracked =
                    probe::metric_sum(&text, "connmon_tracked_sockets", "table=\"userspace\"");
                Ok((tracked >= sockets as f64 * 0.99).then_some(tracked))
            },
        )?;
        let rss_kib = probe::resident_kib(daemon.pid())?;
        drop(held);
        drop(daemon);
        results.samples.push(Sample {
            sockets,
            tracked,
            idle_rss_kib,
            rss_kib,
        });
    }
    Ok(results)
}
