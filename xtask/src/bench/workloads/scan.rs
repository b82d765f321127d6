//! The stuck-send scan's CPU per scan: idle established loopback
//! connections in a namespace of their own, `connmon run` scanning every
//! `INTERVAL`, once with their port watched and once with another port watched
//! (the kernel still walks every socket, and copies none). The figure is
//! the daemon's own account of the scan, `connmon_stuck_scan_cpu_seconds_total`
//! over `connmon_stuck_scans_total`: CPU time of the threads that did it,
//! not wall time.

use std::{
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use anyhow::{Context, Result};
use connmon_tests::{connmon::Daemon, netns::NetNs, poll, process::Process};

use crate::bench::{
    env::{in_netns, interrupt},
    probe,
};

/// The connections' server port; `PORT + 1` is the watched port of the
/// unwatched run. Both below the namespace's ephemeral ports, so no
/// client end lands on either.
pub const PORT: u16 = 7430;
pub const EPHEMERAL: &str = "10000 65000";
/// `--stuck-scan-interval`: quicker than the default 5 s, so a round is
/// short; the CPU of a scan does not depend on it.
pub const INTERVAL: &str = "500ms";
/// Scans per round.
pub const SCANS_PER_ROUND: u32 = 4;

#[derive(Clone, Debug, Default)]
pub struct Results {
    /// Sockets open on `PORT` (both ends of `sockets / 2` connections).
    pub sockets: usize,
    /// CPU ms per scan, one value per round.
    pub watched_ms: Vec<f64>,
    pub unwatched_ms: Vec<f64>,
    /// Namespaces each scan dumped (every namespace on the machine with a
    /// process, other work's too), one value per round.
    pub namespaces: Vec<f64>,
}

/// Lets this process hold `needed` more descriptors: the soft limit up to
/// the hard one, past it only with CAP_SYS_RESOURCE.
fn raise_open_files_limit(needed: usize) -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit");
    }
    let wanted = (needed as libc::rlim_t).saturating_add(1024);
    if limit.rlim_cur >= wanted {
        return Ok(());
    }
    let raise = |rlim_max| {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max,
        };
        // SAFETY: setrlimit with a valid pointer to a local rlimit; it
        // changes this process's limit only.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 }
    };
    if (limit.rlim_max >= wanted && raise(limit.rlim_max)) || raise(wanted) {
        return Ok(());
    }
    anyhow::bail!(
        "{needed} sockets need {wanted} open files, and the hard limit is {} (raising it needs CAP_SYS_RESOURCE): ask for fewer with --scan-sockets",
        limit.rlim_max
    )
}

/// `connections` established loopback connections to `PORT`, made on a
/// thread inside the namespace. The bench holds the client ends; the
/// server ends wait in the accept queue, established sockets without a
/// descriptor, so the open-file limit counts half of them.
fn connections(ns: &NetNs, connections: usize) -> Result<(TcpListener, Vec<TcpStream>)> {
    in_netns(ns.name(), move || {
        let listener = TcpListener::bind(("127.0.0.1", PORT))?;
        let backlog = i32::try_from(connections).unwrap_or(i32::MAX).max(128);
        // SAFETY: listen() again on our own listening socket only raises
        // its backlog (capped by the namespace's somaxconn).
        if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let held = (0..connections)
            .map(|_| TcpStream::connect(("127.0.0.1", PORT)))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok((listener, held))
    })
}

/// CPU ms per scan over `SCANS_PER_ROUND` scans, and the namespaces the
/// last one dumped.
fn round(daemon: &Daemon) -> Result<(f64, f64)> {
    let read = || -> Result<(f64, f64, f64)> {
        let text = daemon.http_get("/metrics")?;
        Ok((
            probe::metric_sum(&text, "connmon_stuck_scans_total", ""),
            probe::metric_sum(&text, "connmon_stuck_scan_cpu_seconds_total", ""),
            probe::metric_sum(&text, "connmon_stuck_scan_namespaces", ""),
        ))
    };
    let (scans_before, cpu_before, _) = read()?;
    let (scans, cpu, namespaces) = poll::until(
        "connmon's stuck scans",
        Duration::from_secs(u64::from(SCANS_PER_ROUND) * 2 + 20),
        || {
            interrupt::check()?;
            let now = read()?;
            Ok((now.0 >= scans_before + f64::from(SCANS_PER_ROUND)).then_some(now))
        },
    )?;
    Ok((
        (cpu - cpu_before) * 1e3 / (scans - scans_before),
        namespaces,
    ))
}

/// `rounds` rounds with the port watched, then as many with it not.
pub fn run(sockets: usize, rounds: u32) -> Result<Results> {
    let sockets = sockets.max(2) / 2 * 2;
    raise_open_files_limit(sockets / 2)?;
    let ns = NetNs::create("bench-scan")?;
    ns.sysctl("net.ipv4.ip_local_port_range", EPHEMERAL)?;
    ns.sysctl("net.core.somaxconn", "65535")?;
    // The scan finds a namespace by its processes.
    let mut sleeper = ns.command("sleep");
    sleeper.arg("infinity");
    let _member = Process::spawn("sleep in the scan's namespace", sleeper)?;
    eprintln!("bench: stuck scan with {sockets} idle sockets");
    let held = connections(&ns, sockets / 2)?;
    let mut results = Results {
        sockets,
        ..Results::default()
    };
    for watched in [true, false] {
        let port = if watched { PORT } else { PORT + 1 };
        let daemon = Daemon::start(&[
            "--ports",
            &port.to_string(),
            "--stuck-scan-interval",
            INTERVAL,
        ])?;
        // The first scan also lists every process of the machine.
        poll::until(
            "connmon's first stuck scan",
            Duration::from_secs(30),
            || {
                interrupt::check()?;
                Ok((daemon.metric("connmon_stuck_scans_total")? >= 1.0).then_some(()))
            },
        )?;
        for _ in 0..rounds.max(1) {
            let (ms, namespaces) = round(&daemon)?;
            if watched {
                results.watched_ms.push(ms);
                results.namespaces.push(namespaces);
            } else {
                results.unwatched_ms.push(ms);
            }
        }
    }
    drop(held);
    Ok(results)
}
