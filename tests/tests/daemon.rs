//! The daemon as an operator meets it: bad settings are one clear line and
//! exit code 2; SIGTERM in the middle of a storm ends it as
//! `monitor_stopped`, detaches every program and exits 0.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use connmon_tests::{
    connmon::{Daemon, binary, first_finding},
    netns::NetNs,
    peer, poll,
    scenario::{IDLE_THRESHOLD, SeedScenario},
    storm::{send_into_blackhole_after_idle, storm_after_idle},
    topology::{Options, REDIS_PORT},
};

#[test]
fn bad_settings_exit_2_with_one_line_naming_them() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("cmt-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "idle_treshold = \"5s\"\n")?;
    let open = dir.join("open.toml");
    std::fs::write(&open, "ports = [6379]\n")?;
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    let typo_arg = typo.to_string_lossy().into_owned();
    let open_arg = open.to_string_lossy().into_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--ports", "0"], "port 0"),
        (vec!["run", "--ports", "redis"], "--ports"),
        (vec!["run", "--idle-threshold", "soon"], "idle_threshold"),
        (
            vec!["run", "--confirm-retransmits", "99"],
            "confirm_retransmits",
        ),
        (vec!["run", "--listen", "everywhere"], "listen"),
        (vec!["run", "--ring-buffer-kib", "100"], "ring_buffer_kib"),
        (
            vec!["run", "--alertmanager-url", "am:9093"],
            "alertmanager_urls",
        ),
        (vec!["run", "--log-format", "yaml"], "--log-format"),
        // The findings' format moved: the old use says where.
        (vec!["run", "--log-format", "text"], "--output-format"),
        (
            vec!["run", "--bpf-run-time-stats", "maybe"],
            "--bpf-run-time-stats",
        ),
        (vec!["run", "--config", &typo_arg], "idle_treshold"),
        (vec!["run", "--config", &open_arg], "world-writable"),
        (
            vec!["run", "--config", "/no/such/file.toml"],
            "/no/such/file.toml",
        ),
        (vec!["run", "--no-such-flag"], "--no-such-flag"),
        (vec!["trace", "--ports", "70000"], "--ports"),
        (vec!["frobnicate"], "frobnicate"),
    ];
    for (args, needle) in cases {
        let output = Command::new(binary())
            .args(&args)
            .output()
            .context("running connmon")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?} printed more than one line:\n{stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} does not name {needle}"
        );
        assert!(output.stdout.is_empty(), "{args:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Ids of the BPF programs `pid` holds open (`prog_id:` in its fdinfo).
fn programs_of(pid: u32) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u64>().ok()),
        );
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Whether the kernel still has program `id` (asked through bpftool).
fn program_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Waits until none of `ids` is loaded. The kernel frees a program after
/// its last reference is dropped and an RCU grace period has passed, so
/// the ids disappear shortly after the holder exits, not at the same instant.
fn wait_until_unloaded(ids: Vec<u64>) -> Result<()> {
    let mut left = ids;
    let outcome =
        connmon_tests::poll::until("programs to be unloaded", Duration::from_secs(5), || {
            left.retain(|id| program_exists(*id));
            Ok(left.is_empty().then_some(()))
        });
    outcome.map_err(|e| anyhow::anyhow!("{e}; still loaded: {left:?}"))
}

/// The seed scenario with the default tcp_retries2 (a storm would last
/// 15 minutes), and the ids of the programs its connmon holds.
fn long_storm_scenario(tag: &str) -> Result<(SeedScenario, Vec<u64>)> {
    let options = Options {
        tcp_retries2: 15,
        ..Options::default()
    };
    let scenario = SeedScenario::start(tag, &options, &[])?;
    let programs = programs_of(scenario.connmon.pid())?;
    Ok((scenario, programs))
}

#[test]
fn sigterm_during_a_storm_ends_it_detaches_and_exits_0() -> Result<()> {
    let (mut scenario, programs) = long_storm_scenario("sigterm")?;
    assert!(
        programs.len() >= 3,
        "connmon holds its programs: {programs:?}"
    );
    scenario.resume_after_forgotten("set")?;
    let started = scenario.finding("storm_started", Duration::from_secs(30))?;

    let exit = scenario
        .connmon
        .signal(libc::SIGTERM, Duration::from_secs(2))?;
    assert_eq!(exit, Some(0), "connmon exits 0 within 2 s of SIGTERM");
    let ended = scenario
        .connmon
        .findings("storm_ended", scenario.topology.app.inode());
    assert!(
        ended
            .iter()
            .any(|r| r["outcome"] == "monitor_stopped" && r["storm_id"] == started["storm_id"]),
        "no monitor_stopped end for the storm: {ended:?}"
    );
    wait_until_unloaded(programs)?;
    Ok(())
}

/// Two copies at once (a DaemonSet rolling update with surge, or one
/// started by hand): both attach their own programs and maps, both report
/// the storm, and stopping one leaves the other's programs loaded and
/// working: a later storm is still found, with the right process.
#[test]
fn two_instances_both_report_and_one_stopping_leaves_the_other_working() -> Result<()> {
    let mut scenario = SeedScenario::start("twins", &Options::default(), &[])?;
    let port = REDIS_PORT.to_string();
    let second = Daemon::start(&["--idle-threshold", IDLE_THRESHOLD, "--ports", &port])?;
    let app = scenario.topology.app.inode();
    let (first_programs, second_programs) = (
        programs_of(scenario.connmon.pid())?,
        programs_of(second.pid())?,
    );
    assert!(
        first_programs.len() >= 3 && second_programs.len() >= 3,
        "each instance holds its own programs: {first_programs:?} {second_programs:?}"
    );
    assert!(
        first_programs
            .iter()
            .all(|id| !second_programs.contains(id)),
        "the instances share programs: {first_programs:?} {second_programs:?}"
    );

    scenario.resume_after_forgotten("set")?;
    let victim = scenario.client.pid();
    let seen_by_first = scenario.finding("storm_started", Duration::from_secs(30))?;
    let seen_by_second = first_finding(&second, "storm_started", app, Duration::from_secs(30))?;
    for storm in [&seen_by_first, &seen_by_second] {
        assert_eq!(storm["pid"], victim, "{storm}");
    }
    assert_eq!(seen_by_first["local"], seen_by_second["local"]);

    let exit = scenario
        .connmon
        .signal(libc::SIGTERM, Duration::from_secs(2))?;
    assert_eq!(exit, Some(0), "the first instance exits 0 on SIGTERM");
    wait_until_unloaded(first_programs)?;
    let gone: Vec<&u64> = second_programs
        .iter()
        .filter(|id| !program_exists(**id))
        .collect();
    assert!(
        gone.is_empty(),
        "stopping one instance unloaded the other's programs {gone:?}"
    );

    // A new connection, idle until forgotten, then used: only the second
    // instance is left to see it.
    let client = scenario.another_client_resumed_after_forgotten("set")?;
    let later = poll::until(
        "the second instance to report the later storm",
        Duration::from_secs(30),
        || {
            Ok(second
                .findings("storm_started", app)
                .into_iter()
                .find(|storm| storm["pid"] == client.pid()))
        },
    )
    .with_context(|| format!("second instance's stdout: {:?}", second.records()))?;
    // The kernel keeps 15 bytes of a command name.
    assert_eq!(later["comm"], "cmt-redis-clien", "{later}");
    assert_eq!(second.stop()?, Some(0), "the second instance exits 0");
    Ok(())
}

/// A network namespace deleted while connmon tracks its sockets, one of
/// them in a storm that would last 15 minutes: its processes are killed
/// and the namespace removed, so the kernel tears the sockets down. The
/// storm ends (with whatever outcome the kernel's teardown gives, never left
/// open), the tracked sockets fall back to where they were, and connmon
/// keeps running.
#[test]
fn a_namespace_deleted_mid_storm_ends_the_storm_and_frees_its_sockets() -> Result<()> {
    const PORT: u16 = 7103;
    let connmon = Daemon::start(&["--idle-threshold", "1s", "--ports", &PORT.to_string()])?;
    let tracked =
        |table: &str| connmon.metric(&format!("connmon_tracked_sockets{{table=\"{table}\"}}"));
    let baseline = (tracked("kernel")?, tracked("userspace")?);

    let ns = NetNs::create("gone")?;
    let addr = format!("127.0.0.1:{PORT}");
    let mut server = peer::server(&ns, &addr)?;
    let mut client = peer::client(&ns, &addr, |_| Ok(()))?;
    // An idle gap past the 1 s threshold.
    let idle_until = Instant::now() + Duration::from_millis(1500);
    let started = storm_after_idle(
        &connmon,
        &ns,
        PORT,
        &mut client,
        idle_until,
        "SET key value",
    )?;

    client.stop(libc::SIGKILL, Duration::from_secs(5))?;
    server.stop(libc::SIGKILL, Duration::from_secs(5))?;
    // `ip netns del` alone (the guard would abort the sockets first): the
    // kernel dismantles the namespace and its sockets with it.
    let deleted = Command::new("ip")
        .args(["netns", "del", ns.name()])
        .status()?;
    assert!(deleted.success(), "ip netns del {}", ns.name());

    let ended = poll::until("the storm to end", Duration::from_secs(60), || {
        Ok(connmon
            .findings("storm_ended", ns.inode())
            .into_iter()
            .find(|r| r["storm_id"] == started["storm_id"]))
    })
    .with_context(|| format!("connmon stdout: {:?}", connmon.records()))?;
    assert_ne!(ended["outcome"], "monitor_stopped", "{ended}");
    poll::until(
        "tracked sockets back to the baseline",
        Duration::from_secs(60),
        || {
            let now = (tracked("kernel")?, tracked("userspace")?);
            Ok((now.0 <= baseline.0 && now.1 <= baseline.1).then_some(()))
        },
    )
    .with_context(|| {
        format!(
            "baseline {baseline:?}, now kernel {:?} userspace {:?}",
            tracked("kernel").ok(),
            tracked("userspace").ok()
        )
    })?;
    assert!(
        connmon.http_get("/readyz").is_ok(),
        "connmon still serves after the namespace went away"
    );
    assert_eq!(connmon.stop()?, Some(0));
    Ok(())
}

/// Runs `connmon trace` as nobody holding exactly `caps` (setpriv).
fn trace_as_nobody_with(caps: &str) -> Result<std::process::Output> {
    let (mut command, dir) = connmon_tests::connmon::as_nobody(caps, "caps")?;
    // Without the required capabilities, trace stops before loading anything.
    let output = command
        .args(["trace", "--socket-map-entries", "1024", "--ports", "1"])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(output?)
}

#[test]
fn a_missing_capability_is_named() -> Result<()> {
    let output = trace_as_nobody_with("")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("missing capability CAP_BPF"), "{stderr}");

    let output = trace_as_nobody_with("+bpf")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("missing capability CAP_PERFMON"),
        "{stderr}"
    );
    Ok(())
}

/// After SIGKILL nothing is left attached, and a restarted connmon learns
/// the existing connection again and still attributes its storm.
#[test]
fn after_sigkill_and_restart_existing_connections_are_attributed_again() -> Result<()> {
    let (mut scenario, programs) = long_storm_scenario("sigkill")?;
    assert!(!programs.is_empty());
    scenario
        .connmon
        .signal(libc::SIGKILL, Duration::from_secs(5))?;
    wait_until_unloaded(programs)?;

    let port = connmon_tests::topology::REDIS_PORT.to_string();
    scenario.connmon =
        connmon_tests::connmon::Daemon::start(&["--idle-threshold", "2s", "--ports", &port])?;
    scenario.resume_after_forgotten("set")?;
    let storm = scenario.client_storm()?;
    assert!(
        storm["idle_seconds"].as_f64().unwrap_or(0.0) >= 2.0,
        "{storm}"
    );
    Ok(())
}

/// More live watched sockets than `--socket-map-entries`: the kernel keeps
/// each one's state in the socket itself, so none is dropped (the option
/// only sizes the table of sockets found at start-up), every one is
/// tracked, and the oldest idle connection's storm is still attributed to
/// its own process, not to the process that opened the flood.
#[test]
fn more_sockets_than_the_map_size_are_all_tracked() -> Result<()> {
    let ns = connmon_tests::netns::NetNs::create("overflow")?;
    // Storm victims give up in seconds.
    ns.sysctl("net.ipv4.tcp_retries2", "4")?;
    let connmon = connmon_tests::connmon::Daemon::start(&[
        "--ports",
        "7301",
        "--socket-map-entries",
        "1024",
        "--idle-threshold",
        "2s",
    ])?;
    let tracked = "connmon_tracked_sockets{table=\"kernel\"}";
    let baseline = connmon.metric(tracked)?;
    let server = connmon_tests::peer::server(&ns, "127.0.0.1:7301")?;
    let mut victim = connmon_tests::peer::client(&ns, "127.0.0.1:7301", |_| Ok(()))?;
    // The victim's last exchange was before "connected": from here it is
    // idle, and must be past the threshold when it sends again.
    let idle_since = Instant::now();
    // 900 client and 900 accepted sockets, each used in process context.
    let mut clients = ns.command(env!("CARGO_BIN_EXE_tcp-peer"));
    clients.args(["many", "127.0.0.1:7301", "900"]);
    let clients = connmon_tests::process::Process::spawn("tcp-peer many", clients)?;
    clients.stdout.wait_for("opened", Duration::from_secs(60))?;
    // Both ends of the victim's connection and of the 900.
    let live = connmon_tests::poll::until(
        "every socket to be tracked",
        Duration::from_secs(20),
        || {
            let live = connmon.metric(tracked)? - baseline;
            Ok((live >= 1802.0).then_some(live))
        },
    )?;
    assert!(live >= 1802.0, "{live}");
    assert_eq!(
        connmon.metric("connmon_lost_records_total{reason=\"socket_map_full\"}")?,
        0.0,
        "no socket was refused its state"
    );
    // The victim, idle all along, sends into a black hole once idle past
    // the 2 s threshold (with margin for the kernel's jiffies).
    let idle_until = idle_since + Duration::from_secs(3);
    let storm = storm_after_idle(
        &connmon,
        &ns,
        7301,
        &mut victim,
        idle_until,
        "after the flood",
    )?;
    assert_eq!(storm["role"], "client", "{storm}");
    assert_ne!(storm["pid"], clients.pid(), "{storm}");
    drop(clients);
    drop(server);
    Ok(())
}

/// More connections already open at start-up than the start-up table
/// holds (`--socket-map-entries`): connmon says how many it could not
/// record (a warning with the numbers), and a storm on an old idle
/// connection is still attributed to its own process.
#[test]
fn a_full_start_up_table_is_said_and_old_connections_are_still_attributed() -> Result<()> {
    let ns = NetNs::create("primefull")?;
    ns.sysctl("net.ipv4.tcp_retries2", "4")?;
    let _server = peer::server(&ns, "127.0.0.1:7304")?;
    let mut victim = peer::client(&ns, "127.0.0.1:7304", |_| Ok(()))?;
    let idle_since = Instant::now();
    // 600 connections, 1,200 watched sockets with the victim's two: more
    // than the smallest table (1,024).
    let mut many = ns.command(env!("CARGO_BIN_EXE_tcp-peer"));
    many.args(["many", "127.0.0.1:7304", "600"]);
    let many = connmon_tests::process::Process::spawn("tcp-peer many", many)?;
    many.stdout.wait_for("opened", Duration::from_secs(60))?;

    let connmon = Daemon::start(&[
        "--ports",
        "7304",
        "--socket-map-entries",
        "1024",
        "--idle-threshold",
        "2s",
    ])?;
    let warning = connmon.process_stderr_wait("the start-up table is full")?;
    assert!(
        warning.contains("added=1024") && warning.contains("socket_map_entries=1024"),
        "{warning}"
    );

    // Idle past the 2 s threshold, with margin for the kernel's jiffies.
    let idle_until = idle_since + Duration::from_secs(3);
    let storm = storm_after_idle(
        &connmon,
        &ns,
        7304,
        &mut victim,
        idle_until,
        "after start-up",
    )?;
    assert_ne!(storm["pid"], many.pid(), "{storm}");
    Ok(())
}

/// `--log-format json`: every log line on stderr is one JSON object (level,
/// message, fields), from the first line on; findings stay on stdout.
#[test]
fn logs_are_json_lines_when_asked() -> Result<()> {
    let connmon =
        connmon_tests::connmon::Daemon::start(&["--ports", "7303", "--log-format", "json"])?;
    let lines = connmon.stderr();
    connmon.stop()?;
    assert!(lines.len() >= 2, "{lines:?}");
    let mut messages = Vec::new();
    for line in &lines {
        let record: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not a JSON log line: {line:?}"))?;
        assert!(record["level"].is_string(), "{line}");
        assert!(record["timestamp"].is_string(), "{line}");
        messages.push(
            record["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert!(
        messages
            .iter()
            .any(|message| message.starts_with("watching for retransmit storms")),
        "{messages:?}"
    );
    Ok(())
}

/// A process may name itself anything (prctl PR_SET_NAME): this one's name
/// would end a JSON-looking line, start a forged record on the next line
/// and turn the terminal red. connmon's text findings, its logs and its
/// Prometheus label values show the name with its control characters
/// escaped; nothing it prints carries the raw newline or escape byte.
#[test]
fn a_hostile_process_name_cannot_forge_output() -> Result<()> {
    const HOSTILE: &str = "x\"}\n{\"ev\":1\x1b[31";
    const ESCAPED: &str = "x\"}\\x0a{\"ev\":1\\x1b[31";
    let ns = connmon_tests::netns::NetNs::create("hostile")?;
    // The storm gives up in seconds.
    ns.sysctl("net.ipv4.tcp_retries2", "4")?;
    let connmon =
        connmon_tests::connmon::Daemon::start_text(&["--ports", "7302", "--idle-threshold", "2s"])?;
    let peer = env!("CARGO_BIN_EXE_tcp-peer");
    let mut server = ns.command(peer);
    server.args(["server", "127.0.0.1:7302"]);
    let server = connmon_tests::process::Process::spawn("tcp-peer server", server)?;
    server
        .stdout
        .wait_for("listening", Duration::from_secs(10))?;
    let mut client = ns.command(peer);
    client
        .args(["client", "127.0.0.1:7302"])
        .env("TCP_PEER_COMM", HOSTILE);
    let mut client = connmon_tests::process::Process::spawn("hostile client", client)?;
    client
        .stdout
        .wait_for("connected", Duration::from_secs(10))?;
    let comm = std::fs::read(format!("/proc/{}/comm", client.pid()))?;
    assert_eq!(comm, format!("{HOSTILE}\n").as_bytes(), "the name took");
    // The idle gap the storm needs (idle threshold 2 s), then a send into
    // a black hole.
    let idle_until = Instant::now() + Duration::from_millis(2500);
    send_into_blackhole_after_idle(&ns, 7302, &mut client, idle_until, "after the idle gap")?;

    let line = connmon_tests::poll::until("the storm's text line", Duration::from_secs(30), || {
        Ok(connmon
            .stdout()
            .into_iter()
            .find(|l| l.contains("STORM_STARTED") && l.contains(ESCAPED)))
    })
    .with_context(|| format!("stdout: {:?}", connmon.stdout()))?;
    assert!(
        line.contains(&format!("{ESCAPED}[{}]", client.pid())),
        "{line}"
    );
    let body = connmon.http_get("/metrics")?;
    let label = format!(
        "process=\"{}\"",
        ESCAPED.replace('\\', "\\\\").replace('"', "\\\"")
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("connmon_storms_started_total{") && l.contains(&label)),
        "no storm counted under {label}:\n{body}"
    );
    let mut printed = connmon.stdout();
    printed.extend(connmon.stderr());
    printed.extend(body.lines().map(str::to_string));
    for line in &printed {
        assert!(!line.contains('\x1b'), "a raw escape byte: {line:?}");
        assert!(!line.starts_with("{\"ev\":1"), "a forged line: {line:?}");
    }
    drop(client);
    drop(server);
    Ok(())
}

/// Capability sets of every thread of `pid`: (tid, CapEff, CapPrm, CapInh).
fn thread_capabilities(pid: u32) -> Result<Vec<(String, u64, u64, u64)>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let status = std::fs::read_to_string(task.path().join("status"))?;
        let field = |name: &str| -> Result<u64> {
            let hex = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .with_context(|| format!("{name} missing"))?;
            Ok(u64::from_str_radix(hex.trim(), 16)?)
        };
        threads.push((
            task.file_name().to_string_lossy().into_owned(),
            field("CapEff:")?,
            field("CapPrm:")?,
            field("CapInh:")?,
        ));
    }
    Ok(threads)
}

/// Once attached, the daemon holds only what its steady state uses, in
/// every thread: CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH for /proc,
/// CAP_SYS_ADMIN for sock_diag in other namespaces, CAP_NET_ADMIN only with
/// `--fail-fast on`; no CAP_BPF, no CAP_PERFMON, none of root's others.
/// It still reads its maps: the kernel numbers in /metrics move.
#[test]
fn after_attaching_the_daemon_keeps_only_the_capabilities_it_uses() -> Result<()> {
    const DAC_READ_SEARCH: u64 = 1 << 2;
    const NET_ADMIN: u64 = 1 << 12;
    const SYS_PTRACE: u64 = 1 << 19;
    const SYS_ADMIN: u64 = 1 << 21;
    let steady = DAC_READ_SEARCH | SYS_PTRACE | SYS_ADMIN;
    for (args, expected) in [
        (vec![], steady),
        (vec!["--fail-fast", "on"], steady | NET_ADMIN),
    ] {
        let connmon = connmon_tests::connmon::Daemon::start(&args)?;
        connmon
            .process_stderr_wait("capabilities not needed after attaching dropped")
            .with_context(|| format!("{args:?}: {:?}", connmon.stderr()))?;
        let threads = thread_capabilities(connmon.pid())?;
        assert!(threads.len() > 1, "the runtime's threads: {threads:?}");
        for (tid, effective, permitted, inheritable) in &threads {
            assert_eq!(
                *effective, expected,
                "{args:?}: thread {tid} CapEff {effective:x}, want {expected:x}"
            );
            assert_eq!(*permitted, expected, "{args:?}: thread {tid} CapPrm");
            assert_eq!(*inheritable, 0, "{args:?}: thread {tid} CapInh");
        }
        // Map reads after the drop: the kernel socket map is counted every
        // 10 s, and the counters are read at each scrape.
        let body = connmon.http_get("/metrics")?;
        assert!(
            body.contains("connmon_kernel_events_emitted_total"),
            "{body}"
        );
        let errors: Vec<_> = connmon
            .stderr()
            .into_iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .filter(|l| l.contains("kernel") || l.contains("map") || l.contains("capabilit"))
            .collect();
        assert!(errors.is_empty(), "{args:?}: {errors:?}");
    }
    Ok(())
}

/// Processes come and go under new names (jobs, cron, `kubectl exec`): the
/// metrics of each go once they have been quiet for the series expiry, so
/// /metrics holds what is active now, not every name seen since start.
#[test]
fn short_lived_process_names_leave_metrics_bounded() -> Result<()> {
    const WAVE: usize = 3;
    let ns = connmon_tests::netns::NetNs::create("names")?;
    // The kernel gives up after a few retransmits: the series then go quiet.
    ns.sysctl("net.ipv4.tcp_retries2", "2")?;
    let ports = [7311u16, 7312];
    let connmon = connmon_tests::connmon::Daemon::start(&[
        "--ports",
        &format!("{},{}", ports[0], ports[1]),
        "--series-expiry",
        "2s",
    ])?;
    let names_dir = connmon_tests::alerting::TempDir::new("names")?;
    let peer = env!("CARGO_BIN_EXE_tcp-peer");
    let short_series = |metrics: &str| -> Vec<String> {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("connmon_retransmits_total{") && l.contains("process=\"short-")
            })
            .map(str::to_string)
            .collect()
    };
    for (wave, port) in ports.iter().enumerate() {
        let mut server = ns.command(peer);
        server.args(["server", &format!("127.0.0.1:{port}")]);
        let server = connmon_tests::process::Process::spawn("tcp-peer server", server)?;
        server
            .stdout
            .wait_for("listening", Duration::from_secs(10))?;
        // Each client runs under a name of its own (the command name is the
        // name it was executed by).
        let mut clients = Vec::new();
        let mut names = Vec::new();
        for i in 0..WAVE {
            let name = format!("short-{wave}-{i}");
            let link = names_dir.0.join(&name);
            std::os::unix::fs::symlink(peer, &link)?;
            let mut client = ns.command(&link.to_string_lossy());
            client.args(["client", &format!("127.0.0.1:{port}")]);
            let client = connmon_tests::process::Process::spawn(&name, client)?;
            client
                .stdout
                .wait_for("connected", Duration::from_secs(10))?;
            clients.push(client);
            names.push(name);
        }
        ns.blackhole_tcp_port(*port)?;
        for client in &mut clients {
            client.send_line("into the void")?;
        }
        // Every name of this wave is counted, and nothing of earlier waves
        // is left: at no point more than one wave's series (a name can have
        // two, timeout and tail-loss-probe retransmits).
        poll::until(
            &format!("wave {wave}'s retransmits under their names"),
            Duration::from_secs(20),
            || {
                let series = short_series(&connmon.http_get("/metrics")?);
                anyhow::ensure!(series.len() <= WAVE * 2, "{series:#?}");
                Ok(names
                    .iter()
                    .all(|n| {
                        series
                            .iter()
                            .any(|s| s.contains(&format!("process=\"{n}\"")))
                    })
                    .then_some(()))
            },
        )?;
        poll::until(
            &format!("wave {wave}'s series to expire"),
            Duration::from_secs(40),
            || {
                let series = short_series(&connmon.http_get("/metrics")?);
                Ok(series.is_empty().then_some(()))
            },
        )?;
        drop(clients);
        drop(server);
    }
    assert_eq!(connmon.stop()?, Some(0));
    Ok(())
}
