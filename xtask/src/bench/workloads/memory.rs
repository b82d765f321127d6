//! Resident memory with many tracked sockets: connections opened on the
//! loopback of a namespace of its own, on watched ports, the client ends
//! held by a few Python processes, the server ends waiting in the accept
//! queues; connmon tracks both ends of each.

use std::{net::TcpListener, os::fd::AsRawFd, time::Duration};

use anyhow::{Context, Result};
use connmon_tests::{connmon::Daemon, netns::NetNs, poll, process::Process};

use crate::bench::{
    env::{in_netns, interrupt},
    probe,
};

const PORTS: [u16; 4] = [7410, 7411, 7412, 7413];
pub const SIZES: [u64; 3] = [10_000, 100_000, 250_000];

#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Sockets opened (both ends of `sockets / 2` connections).
    pub sockets: u64,
    /// connmon's own count of sockets in its userspace table.
    pub tracked: f64,
    /// Records lost on the way (ring buffer full, socket map full).
    pub lost_records: f64,
    pub idle_rss_kib: u64,
    pub rss_kib: u64,
    /// connmon's CPU (all threads) while the sockets were opened and
    /// counted.
    pub cpu_seconds: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Results {
    pub samples: Vec<Sample>,
}

/// Connections a client process opens: its open-file limit (20,000 here,
/// and not raisable without CAP_SYS_RESOURCE) caps it.
const PER_CLIENT: u64 = 15_000;

/// Opens connections to the ports in argv[2] (comma-separated) until argv[1]
/// are open, at most about 5,000 a second (a faster burst overflows the
/// ring buffer between drains: measured apart, as lost records), says so,
/// and holds them until stdin closes.
const CLIENT: &str = "import socket, sys, time\n\
ports = [int(p) for p in sys.argv[2].split(',')]\n\
held = []\n\
for i in range(int(sys.argv[1])):\n    \
held.append(socket.create_connection(('127.0.0.1', ports[i % len(ports)])))\n    \
if i % 500 == 499: time.sleep(0.1)\n\
print('opened', len(held), flush=True)\n\
sys.stdin.read()\n";

/// Listeners on `PORTS` whose accept queues hold every connection: the
/// server ends are full sockets without a file descriptor each.
fn listen() -> Result<Vec<TcpListener>> {
    PORTS
        .iter()
        .map(|port| {
            let listener = TcpListener::bind(("127.0.0.1", *port))?;
            // SAFETY: listen() again on our own listening socket only
            // raises its backlog (capped by the namespace's somaxconn).
            if unsafe { libc::listen(listener.as_raw_fd(), 65_535) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            Ok(listener)
        })
        .collect()
}

/// Client processes in `ns` holding `connections` connections in all.
fn clients(ns: &NetNs, connections: u64) -> Result<Vec<Process>> {
    let ports = PORTS.map(|p| p.to_string()).join(",");
    let mut clients = Vec::new();
    let mut left = connections;
    while left > 0 {
        let count = left.min(PER_CLIENT);
        left -= count;
        let mut command = ns.command("python3");
        command.args(["-c", CLIENT, &count.to_string(), &ports]);
        let client = Process::spawn("socket holder", command)?;
        // One at a time, so the pace holds.
        client
            .stdout
            .wait_for("opened", Duration::from_secs(180))
            .with_context(|| format!("{:?}", client.stderr.snapshot()))?;
        clients.push(client);
    }
    Ok(clients)
}

pub fn run() -> Result<Results> {
    let ns = NetNs::create("bench-mem")?;
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    ns.sysctl("net.core.somaxconn", "65535")?;
    let ports = PORTS.map(|p| p.to_string()).join(",");
    let mut results = Results::default();
    for sockets in SIZES {
        interrupt::check()?;
        eprintln!("bench: memory with {sockets} sockets");
        // Default settings: the kernel keeps every watched socket's state
        // in the socket itself, whatever `--socket-map-entries` says.
        let daemon = Daemon::start(&["--ports", &ports])?;
        let idle_rss_kib = probe::resident_kib(daemon.pid())?;
        let cpu_before = probe::cpu_ns(daemon.pid());
        let name = ns.name().to_string();
        let listeners = in_netns(&name, listen)?;
        let held = clients(&ns, sockets / 2)?;
        // The userspace count is refreshed every 10 s: wait until it shows
        // every socket, or has not grown for 12 s (90 s at most).
        let mut tracked = 0.0;
        let mut unchanged = 0;
        let _ = poll::until(
            "connmon to track the sockets",
            Duration::from_secs(90),
            || {
                interrupt::check()?;
                let text = daemon.http_get("/metrics")?;
                // Kernel state of each watched socket (the userspace table
                // holds only sockets a record was written for).
                let now = probe::metric_sum(&text, "connmon_tracked_sockets", "table=\"kernel\"");
                unchanged = if now > 0.0 && now == tracked {
                    unchanged + 1
                } else {
                    0
                };
                tracked = now;
                std::thread::sleep(Duration::from_millis(200));
                Ok((tracked >= sockets as f64 || unchanged >= 60).then_some(()))
            },
        );
        interrupt::check()?;
        let rss_kib = probe::resident_kib(daemon.pid())?;
        let cpu_seconds = probe::cpu_ns(daemon.pid()).saturating_sub(cpu_before) as f64 / 1e9;
        let lost_records = probe::metric_sum(
            &daemon.http_get("/metrics")?,
            "connmon_lost_records_total",
            "",
        );
        drop(held);
        drop(listeners);
        drop(daemon);
        results.samples.push(Sample {
            sockets,
            tracked,
            lost_records,
            idle_rss_kib,
            rss_kib,
            cpu_seconds,
        });
    }
    Ok(results)
}
