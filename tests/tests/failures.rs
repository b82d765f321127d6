//! Connections that fail without a retransmit storm, each in a namespace
//! the test builds, with the kernel's own errno as ground truth: a local
//! egress drop (an nftables OUTPUT rule), a connect to a dead path (SYN
//! retransmits), a keepalive that finds the path dead, a peer that stopped
//! reading (zero window). Each has a negative: the same connection over an
//! intact path (or to a reader that keeps draining) says nothing.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, ensure};
use connmon_tests::{
    artifacts::validate_schemas,
    connmon::{Daemon, Trace, first_finding, first_finding_of},
    netns::NetNs,
    poll,
    process::Process,
};
use serde_json::Value;

/// The failure findings, all of them: none may appear in a negative.
const FAILURES: [&str; 4] = [
    "egress_blocked",
    "connect_stalled",
    "keepalive_timeout",
    "zero_window",
];

/// Stuck sockets scanned every 500 ms, a shut window confirmed after 2 s:
/// as quick as a test wants, the same rules as the defaults.
fn daemon(port: u16) -> Result<Daemon> {
    Daemon::start(&[
        "--idle-threshold",
        "1s",
        "--ports",
        &port.to_string(),
        "--stuck-scan-interval",
        "500ms",
        "--zero-window-confirm",
        "2s",
    ])
}

/// A namespace whose kernel gives up on a connection within seconds.
fn namespace(tag: &str) -> Result<NetNs> {
    let ns = NetNs::create(tag)?;
    ns.sysctl("net.ipv4.tcp_retries2", "4")?;
    Ok(ns)
}

fn echo_server(ns: &NetNs, port: u16) -> Result<Process> {
    let mut command = ns.command(env!("CARGO_BIN_EXE_tcp-peer"));
    command.args(["server", &format!("127.0.0.1:{port}")]);
    let server = Process::spawn("tcp-peer server", command)?;
    server
        .stdout
        .wait_for("listening", Duration::from_secs(10))?;
    Ok(server)
}

fn client(ns: &NetNs, port: u16) -> Result<Process> {
    let mut command = ns.command(env!("CARGO_BIN_EXE_tcp-peer"));
    command.args(["client", &format!("127.0.0.1:{port}")]);
    let client = Process::spawn("tcp-peer client", command)?;
    client
        .stdout
        .wait_for("connected", Duration::from_secs(10))?;
    Ok(client)
}

fn assert_valid(finding: &Value) -> Result<()> {
    let (ok, report) = validate_schemas(&BTreeMap::from([(
        "finding.schema.json",
        vec![finding.clone()],
    )]))?;
    ensure!(ok, "{finding} does not match finding.schema.json: {report}");
    Ok(())
}

/// `connmon_connection_failures_total` of `mode`, summed: present and
/// counted, or an error.
fn failures_counted(connmon: &Daemon, mode: &str) -> Result<f64> {
    let metrics = connmon.http_get("/metrics")?;
    let samples: Vec<f64> = metrics
        .lines()
        .filter(|line| {
            line.starts_with("connmon_connection_failures_total{")
                && line.contains(&format!("mode=\"{mode}\""))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    ensure!(
        !samples.is_empty(),
        "no connmon_connection_failures_total{{mode=\"{mode}\"}} series"
    );
    Ok(samples.iter().sum())
}

/// Everything connmon reported about `ns`, after it processed every
/// record the kernel wrote.
fn settled_findings(connmon: &Daemon, ns: &NetNs) -> Result<Vec<Value>> {
    connmon.drained(Duration::from_secs(10))?;
    Ok(connmon
        .records()
        .into_iter()
        .filter(|record| record["netns"] == ns.inode())
        .collect())
}

fn none_of(findings: &[Value], events: &[&str]) -> Result<()> {
    let found: Vec<&Value> = findings
        .iter()
        .filter(|record| events.iter().any(|event| record["event"] == *event))
        .collect();
    ensure!(found.is_empty(), "unexpected findings: {found:?}");
    Ok(())
}

/// An OUTPUT drop in the client's namespace: the write after an idle gap
/// never leaves the host, the kernel probes (no retransmit) and gives up.
/// Reported while the client still hangs, then again when it gives up.
#[test]
fn a_local_egress_drop_is_reported_as_egress_blocked() -> Result<()> {
    const PORT: u16 = 7151;
    let ns = namespace("egress")?;
    // Seven probes, 25 s: the early warning has room to come first.
    ns.sysctl("net.ipv4.tcp_retries2", "6")?;
    let _server = echo_server(&ns, PORT)?;
    let connmon = daemon(PORT)?;
    let trace = Trace::start(&[
        "--ports",
        &PORT.to_string(),
        "--netns",
        &ns.inode().to_string(),
    ])?;
    let mut client = client(&ns, PORT)?;
    ns.wait_until_idle(PORT, Duration::from_millis(1500))?;
    let retransmitted_before = ns.retransmitted_segments()?;
    ns.nft(&format!(
        "table inet cmt_egress {{\n  chain output {{\n    type filter hook output priority 0; policy accept;\n    tcp dport {PORT} drop\n  }}\n}}\n"
    ))?;
    client.send_line("stuck")?;
    let warning = first_finding(
        &connmon,
        "egress_blocked",
        ns.inode(),
        Duration::from_secs(20),
    )?;
    // Still hanging: the client has not seen an error yet.
    let client_lines = client.stdout.snapshot();
    ensure!(
        !client_lines.iter().any(|line| line.starts_with("error")),
        "the warning came after the client failed: {client_lines:?} {warning}"
    );
    ensure!(warning.get("outcome").is_none(), "still hanging: {warning}");
    assert_eq!(warning["pid"], client.pid(), "{warning}");
    assert_eq!(warning["remote"], format!("127.0.0.1:{PORT}"), "{warning}");
    assert_eq!(warning["role"], "client", "{warning}");
    assert_eq!(warning["unsent_bytes"], 6, "{warning}");
    assert!(warning["probes"].as_u64().unwrap_or(0) >= 3, "{warning}");
    // From tcp_info and the probe backoff: the same gap, give or take a tick.
    assert!(
        warning["idle_seconds"].as_f64().unwrap_or(0.0) >= 1.4,
        "{warning}"
    );
    ensure!(
        warning["hint"]
            .as_str()
            .is_some_and(|hint| hint.contains("firewall") && hint.contains("hangs")),
        "{warning}"
    );
    assert_valid(&warning)?;
    assert_eq!(failures_counted(&connmon, "egress_blocked")?, 1.0);
    // Ground truth: the client's own error, ETIMEDOUT.
    let error = client.stdout.wait_for("error", Duration::from_secs(40))?;
    ensure!(error.ends_with(" 110"), "the client saw {error}");
    let blocked = poll::until(
        "egress_blocked with the kernel's verdict",
        Duration::from_secs(10),
        || {
            Ok(connmon
                .findings("egress_blocked", ns.inode())
                .into_iter()
                .find(|finding| finding.get("outcome").is_some()))
        },
    )?;
    assert_eq!(blocked["pid"], client.pid(), "{blocked}");
    assert_eq!(blocked["comm"], "tcp-peer", "{blocked}");
    assert_eq!(blocked["remote"], format!("127.0.0.1:{PORT}"), "{blocked}");
    assert_eq!(blocked["role"], "client", "{blocked}");
    assert_eq!(blocked["outcome"], "timed_out", "{blocked}");
    assert_eq!(blocked["error"], "ETIMEDOUT", "{blocked}");
    // "stuck\n": every byte of it stayed in the host.
    assert_eq!(blocked["unsent_bytes"], 6, "{blocked}");
    assert!(blocked["probes"].as_u64().unwrap_or(0) >= 1, "{blocked}");
    assert!(
        blocked["idle_seconds"].as_f64().unwrap_or(0.0) >= 1.5,
        "{blocked}"
    );
    let hint = blocked["hint"].as_str().unwrap_or_default();
    ensure!(
        hint.contains("firewall") && hint.contains("NetworkPolicy"),
        "{hint}"
    );
    // Nothing was retransmitted, so nothing looks like a storm.
    assert_eq!(ns.retransmitted_segments()?, retransmitted_before);
    let findings = settled_findings(&connmon, &ns)?;
    none_of(
        &findings,
        &[
            "storm_started",
            "connect_stalled",
            "keepalive_timeout",
            "zero_window",
        ],
    )?;
    assert_eq!(
        findings
            .iter()
            .filter(|f| f["event"] == "egress_blocked")
            .count(),
        2,
        "a warning and the final report: {findings:?}"
    );
    // One connection, counted once.
    assert_eq!(failures_counted(&connmon, "egress_blocked")?, 1.0);
    assert_valid(&blocked)?;

    // trace shows the same end state the finding was made from.
    let error = poll::until("trace's socket_error", Duration::from_secs(10), || {
        Ok(trace
            .records()
            .into_iter()
            .find(|record| record["event"] == "socket_error" && record["pid"] == client.pid()))
    })?;
    assert_eq!(error["error"], "ETIMEDOUT", "{error}");
    assert_eq!(error["unsent_bytes"], 6, "{error}");
    assert!(error["probes_out"].as_u64().unwrap_or(0) >= 1, "{error}");
    assert_eq!(error["rto_retransmits"], 0, "{error}");
    assert!(error["send_window"].as_u64().unwrap_or(0) > 0, "{error}");
    assert_eq!(error["tcp_retries2"], 6, "{error}");
    assert_eq!(trace.stop()?, Some(0), "connmon trace exits 0 on SIGINT");
    Ok(())
}

/// The path drops what comes back (an INPUT drop in the client's
/// namespace): the write leaves the host and is retransmitted. A storm,
/// never egress_blocked, neither while it hangs nor at its end.
#[test]
fn a_drop_on_the_way_back_is_a_storm_not_egress_blocked() -> Result<()> {
    const PORT: u16 = 7157;
    let ns = namespace("ingress")?;
    let _server = echo_server(&ns, PORT)?;
    let connmon = daemon(PORT)?;
    let mut client = client(&ns, PORT)?;
    ns.wait_until_idle(PORT, Duration::from_millis(1500))?;
    ns.nft(&format!(
        "table inet cmt_ingress {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    tcp sport {PORT} drop\n  }}\n}}\n"
    ))?;
    client.send_line("lost")?;
    let error = client.stdout.wait_for("error", Duration::from_secs(30))?;
    ensure!(error.ends_with(" 110"), "the client saw {error}");
    first_finding(
        &connmon,
        "storm_started",
        ns.inode(),
        Duration::from_secs(10),
    )?;
    none_of(&settled_findings(&connmon, &ns)?, &FAILURES)
}

/// The same idle connection over an intact path: the write goes out, is
/// echoed, and the close is orderly. No failure of any kind.
#[test]
fn an_idle_connection_used_again_without_a_drop_is_no_egress_failure() -> Result<()> {
    const PORT: u16 = 7152;
    let ns = namespace("egress-ok")?;
    let _server = echo_server(&ns, PORT)?;
    let connmon = daemon(PORT)?;
    let mut client = client(&ns, PORT)?;
    ns.wait_until_idle(PORT, Duration::from_millis(1500))?;
    // An unrelated OUTPUT drop is in place: only the watched flow's matter.
    ns.nft("table inet cmt_egress {\n  chain output {\n    type filter hook output priority 0; policy accept;\n    tcp dport 9 drop\n  }\n}\n")?;
    client.send_line("fine")?;
    client
        .stdout
        .wait_for("echoed fine", Duration::from_secs(10))?;
    client.stop(libc::SIGTERM, Duration::from_secs(10))?;
    poll::until(
        "the client's socket to close",
        Duration::from_secs(10),
        || {
            let ss = ns.exec(
                "ss",
                &[
                    "-tn",
                    "state",
                    "established",
                    "dport",
                    "=",
                    &format!(":{PORT}"),
                ],
            )?;
            Ok((ss.lines().count() <= 1).then_some(()))
        },
    )?;
    none_of(&settled_findings(&connmon, &ns)?, &FAILURES)
}

/// SYNs dropped on the way in: the connect hangs while the kernel
/// retransmits the SYN. Reported at the third SYN retransmit while the
/// client still waits; a connect the kernel gives up on sooner is reported
/// when it times out.
#[test]
fn a_connect_to_a_dead_path_is_reported_as_connect_stalled() -> Result<()> {
    const PORT: u16 = 7153;
    let ns = namespace("syn")?;
    // 1 + 2 + 4 + 8 s: the connect fails after 15 s.
    ns.sysctl("net.ipv4.tcp_syn_retries", "3")?;
    ns.blackhole_tcp_port(PORT)?;
    let connmon = daemon(PORT)?;
    let mut command = ns.command(env!("CARGO_BIN_EXE_tcp-peer"));
    command.args(["client", &format!("127.0.0.1:{PORT}")]);
    let client = Process::spawn("tcp-peer client", command)?;
    let stalled = first_finding(
        &connmon,
        "connect_stalled",
        ns.inode(),
        Duration::from_secs(20),
    )?;
    ensure!(
        client.stdout.snapshot().is_empty(),
        "reported only after the connect ended: {:?}",
        client.stdout.snapshot()
    );
    assert_eq!(stalled["pid"], client.pid(), "{stalled}");
    assert_eq!(stalled["owner_source"], "connect", "{stalled}");
    assert_eq!(stalled["remote"], format!("127.0.0.1:{PORT}"), "{stalled}");
    assert_eq!(stalled["retransmits"], 3, "{stalled}");
    ensure!(stalled.get("outcome").is_none(), "still hanging: {stalled}");
    ensure!(
        stalled["hint"]
            .as_str()
            .is_some_and(|hint| hint.contains("SYN") && hint.contains("connect")),
        "{stalled}"
    );
    assert_valid(&stalled)?;
    let error = client.stdout.wait_for("error", Duration::from_secs(30))?;
    ensure!(error.ends_with(" 110"), "the client saw {error}");

    // One SYN retransmit, then the kernel gives up: reported at the end.
    ns.sysctl("net.ipv4.tcp_syn_retries", "1")?;
    let mut command = ns.command(env!("CARGO_BIN_EXE_tcp-peer"));
    command.args(["client", &format!("127.0.0.1:{PORT}")]);
    let quick = Process::spawn("tcp-peer client", command)?;
    quick.stdout.wait_for("error", Duration::from_secs(20))?;
    let timed_out = poll::until(
        "the second connect's finding",
        Duration::from_secs(10),
        || {
            Ok(connmon
                .findings("connect_stalled", ns.inode())
                .into_iter()
                .find(|finding| finding["pid"] == quick.pid()))
        },
    )
    .with_context(|| {
        format!(
            "second client {}: {:?}\nconnmon events: {:?}\nconnmon stdout: {:?}\nconnmon stderr: {:?}",
            quick.pid(),
            quick.stdout.snapshot(),
            connmon
                .http_get("/metrics")
                .unwrap_or_default()
                .lines()
                .filter(|line| line.starts_with("connmon_events_total")
                    || line.starts_with("connmon_kernel_events_emitted_total")
                    || line.starts_with("connmon_lost_records_total")
                    || line.starts_with("connmon_tracked_sockets")
                    || line.starts_with("connmon_bpf_program_r"))
                .map(str::to_owned)
                .collect::<Vec<_>>(),
            connmon.records(),
            connmon.stderr()
        )
    })?;
    assert_eq!(timed_out["outcome"], "timed_out", "{timed_out}");
    assert_eq!(timed_out["error"], "ETIMEDOUT", "{timed_out}");
    assert_valid(&timed_out)?;
    let findings = settled_findings(&connmon, &ns)?;
    assert_eq!(
        findings
            .iter()
            .filter(|f| f["event"] == "connect_stalled")
            .count(),
        2,
        "one finding per connect: {findings:?}"
    );
    none_of(
        &findings,
        &["storm_started", "egress_blocked", "keepalive_timeout"],
    )?;
    assert_eq!(failures_counted(&connmon, "connect_stalled")?, 2.0);
    Ok(())
}

/// Connects that are answered: one accepted, one refused (a reset is a
/// fast failure, not a stall). No connect_stalled.
#[test]
fn answered_connects_are_not_stalled() -> Result<()> {
    const PORT: u16 = 7154;
    let ns = namespace("syn-ok")?;
    let connmon = daemon(PORT)?;
    let mut command = ns.command(env!("CARGO_BIN_EXE_tcp-peer"));
    command.args(["client", &format!("127.0.0.1:{PORT}")]);
    let refused = Process::spawn("tcp-peer client", command)?;
    let error = refused.stdout.wait_for("error", Duration::from_secs(10))?;
    ensure!(error.ends_with(" 111"), "refused: {error}");
    let _server = echo_server(&ns, PORT)?;
    let mut accepted = client(&ns, PORT)?;
    accepted.stop(libc::SIGTERM, Duration::from_secs(10))?;
    none_of(&settled_findings(&connmon, &ns)?, &FAILURES)
}

/// A pooled client with keepalive as the runbook advises, scaled down:
/// first probe after 1 s idle, then every 1 s, three unanswered close it.
fn keepalive_client(ns: &NetNs, port: u16, wait_seconds: u32) -> Result<Process> {
    let mut command = ns.command(env!("CARGO_BIN_EXE_tcp-peer"));
    command.args([
        "keepalive",
        &format!("127.0.0.1:{port}"),
        "1",
        "1",
        "3",
        &wait_seconds.to_string(),
    ]);
    let client = Process::spawn("tcp-peer keepalive", command)?;
    client
        .stdout
        .wait_for("connected", Duration::from_secs(10))?;
    Ok(client)
}

/// The path stops answering while the connection idles: the client's
/// keepalive probes go unanswered and the kernel closes it with ETIMEDOUT,
/// no data retransmitted.
#[test]
fn keepalive_probes_that_go_unanswered_are_a_keepalive_timeout() -> Result<()> {
    const PORT: u16 = 7155;
    let ns = namespace("keepalive")?;
    let _server = echo_server(&ns, PORT)?;
    let connmon = daemon(PORT)?;
    let client = keepalive_client(&ns, PORT, 30)?;
    // Nothing from the server reaches the client any more (its ACKs to
    // the probes included): the path died while the connection idled.
    ns.nft(&format!(
        "table inet cmt_keepalive {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    tcp sport {PORT} drop\n  }}\n}}\n"
    ))?;
    let error = client.stdout.wait_for("error", Duration::from_secs(30))?;
    ensure!(error.ends_with(" 110"), "the client saw {error}");
    let dead = first_finding_of(
        &connmon,
        "keepalive_timeout",
        ns.inode(),
        client.pid(),
        Duration::from_secs(10),
    )?;
    assert_eq!(dead["comm"], "tcp-peer", "{dead}");
    assert_eq!(dead["remote"], format!("127.0.0.1:{PORT}"), "{dead}");
    assert_eq!(dead["outcome"], "timed_out", "{dead}");
    assert_eq!(dead["probes"], 3, "TCP_KEEPCNT: {dead}");
    // TCP_KEEPIDLE 1 s plus three probes 1 s apart, at least.
    assert!(
        dead["idle_seconds"].as_f64().unwrap_or(0.0) >= 3.0,
        "{dead}"
    );
    ensure!(
        dead["hint"]
            .as_str()
            .is_some_and(|hint| hint.contains("keepalive") && hint.contains("TCP_KEEPIDLE")),
        "{dead}"
    );
    let findings = settled_findings(&connmon, &ns)?;
    none_of(
        &findings,
        &["storm_started", "egress_blocked", "connect_stalled"],
    )?;
    assert_eq!(failures_counted(&connmon, "keepalive_timeout")?, 1.0);
    assert_valid(&dead)
}

/// The same client over an intact path: its probes are answered for
/// several rounds and the connection stays up. No keepalive_timeout.
#[test]
fn answered_keepalive_probes_are_quiet() -> Result<()> {
    const PORT: u16 = 7156;
    let ns = namespace("keepalive-ok")?;
    let _server = echo_server(&ns, PORT)?;
    let connmon = daemon(PORT)?;
    // Six seconds: more than the three unanswered probes would take.
    let client = keepalive_client(&ns, PORT, 6)?;
    client.stdout.wait_for("quiet", Duration::from_secs(20))?;
    none_of(&settled_findings(&connmon, &ns)?, &FAILURES)
}

/// A server that reads each connection `bytes_per_tick` every `tick_ms`
/// (0: never).
fn reader(ns: &NetNs, port: u16, bytes_per_tick: usize, tick_ms: u64) -> Result<Process> {
    let mut command = ns.command(env!("CARGO_BIN_EXE_tcp-peer"));
    command.args([
        "reader",
        &format!("127.0.0.1:{port}"),
        &bytes_per_tick.to_string(),
        &tick_ms.to_string(),
    ]);
    let server = Process::spawn("tcp-peer reader", command)?;
    server
        .stdout
        .wait_for("listening", Duration::from_secs(10))?;
    Ok(server)
}

/// A client that writes as fast as the kernel takes it.
fn writer(ns: &NetNs, port: u16) -> Result<Process> {
    let mut command = ns.command(env!("CARGO_BIN_EXE_tcp-peer"));
    command.args(["flood", &format!("127.0.0.1:{port}")]);
    let writer = Process::spawn("tcp-peer flood", command)?;
    writer
        .stdout
        .wait_for("connected", Duration::from_secs(10))?;
    Ok(writer)
}

/// The writer's socket as `ss -tnoi` shows it (with its timer and
/// unsent bytes), if it is established.
fn writer_socket(ns: &NetNs, port: u16) -> Result<Option<String>> {
    let ss = ns.exec(
        "ss",
        &[
            "-tnoiH",
            "state",
            "established",
            "dport",
            "=",
            &format!(":{port}"),
        ],
    )?;
    Ok((!ss.trim().is_empty()).then(|| ss.split_whitespace().collect::<Vec<_>>().join(" ")))
}

/// A server that accepts and never reads: the writer's data fills its
/// buffers, the window shuts and stays shut, the peer answers every window
/// probe. Reported while the writer still hangs, with its pid. The
/// namespace is made after the daemon started: the scan finds new ones.
#[test]
fn a_peer_that_stopped_reading_is_reported_as_zero_window() -> Result<()> {
    const PORT: u16 = 7158;
    let connmon = daemon(PORT)?;
    let ns = namespace("zerownd")?;
    let _server = reader(&ns, PORT, 0, 0)?;
    let writer = writer(&ns, PORT)?;
    let stopped = first_finding(&connmon, "zero_window", ns.inode(), Duration::from_secs(30))?;
    // Still hanging: the writer's connection lives, its data queued behind
    // the shut window, the kernel probing it.
    let socket = writer_socket(&ns, PORT)?.context("the writer's connection is gone")?;
    ensure!(
        socket.contains("timer:(persist") && socket.contains("notsent:"),
        "the writer's socket: {socket}"
    );
    assert_eq!(stopped["pid"], writer.pid(), "{stopped}");
    assert_eq!(stopped["comm"], "tcp-peer", "{stopped}");
    assert_eq!(stopped["remote"], format!("127.0.0.1:{PORT}"), "{stopped}");
    assert_eq!(stopped["role"], "client", "{stopped}");
    ensure!(stopped.get("outcome").is_none(), "still hanging: {stopped}");
    assert!(
        stopped["unsent_bytes"].as_u64().unwrap_or(0) > 0,
        "{stopped}"
    );
    ensure!(
        stopped["hint"].as_str().is_some_and(|hint| {
            hint.contains("stopped reading") && hint.contains("TCP_USER_TIMEOUT")
        }),
        "{stopped}"
    );
    assert_valid(&stopped)?;
    let findings = settled_findings(&connmon, &ns)?;
    none_of(
        &findings,
        &[
            "storm_started",
            "egress_blocked",
            "connect_stalled",
            "keepalive_timeout",
        ],
    )?;
    assert_eq!(
        findings
            .iter()
            .filter(|f| f["event"] == "zero_window")
            .count(),
        1,
        "one finding per episode: {findings:?}"
    );
    assert_eq!(failures_counted(&connmon, "zero_window")?, 1.0);
    // The scan's own cost is on /metrics: scans, their CPU time, the
    // namespaces dumped (this one among them) and those skipped.
    ensure!(connmon.metric("connmon_stuck_scans_total")? >= 1.0);
    ensure!(connmon.metric("connmon_stuck_scan_cpu_seconds_total")? > 0.0);
    ensure!(connmon.metric("connmon_stuck_scan_namespaces")? >= 1.0);
    connmon.metric("connmon_stuck_scan_namespaces_skipped_total")?;
    Ok(())
}

/// A reader that is slow but keeps draining: the writer outpaces it, so
/// its window shuts again and again, but only for moments. No finding.
#[test]
fn a_slow_reader_that_keeps_draining_is_no_zero_window() -> Result<()> {
    const PORT: u16 = 7159;
    let ns = namespace("slowread")?;
    // 16 KiB every 20 ms: about 800 KB/s.
    let server = reader(&ns, PORT, 16 * 1024, 20)?;
    let connmon = daemon(PORT)?;
    let _writer = writer(&ns, PORT)?;
    // The premise: the window does shut (the probe timer runs) now and then.
    poll::until(
        "the writer's window to shut for a moment",
        Duration::from_secs(20),
        || {
            Ok(writer_socket(&ns, PORT)?
                .filter(|socket| socket.contains("persist"))
                .map(|_| ()))
        },
    )?;
    // Eight megabytes drained at that pace take about ten seconds: five
    // times the confirmation, twenty scans.
    server.stdout.wait_for("read 8", Duration::from_secs(60))?;
    none_of(&settled_findings(&connmon, &ns)?, &FAILURES)
}
