//! The seed scenario end to end: an idle pooled Redis connection through a
//! middlebox that forgets idle flows. `connmon run` must report the storm
//! while the client still hangs, with the right process, endpoint, idle gap
//! and hint, and stay quiet where there is no idle storm.

use std::{
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, ensure};
use connmon_tests::{
    connmon::{Daemon, first_finding, first_finding_of},
    poll,
    process::Process,
    scenario::{IDLE_THRESHOLD, SeedScenario},
    topology::{CACHE_V4, Options, REDIS_PORT, StaleFlow, Topology, redis_server},
};
use serde_json::Value;

fn daemon() -> Result<Daemon> {
    Daemon::start(&[
        "--idle-threshold",
        IDLE_THRESHOLD,
        "--ports",
        &REDIS_PORT.to_string(),
    ])
}

fn wall_time(rfc3339: &Value) -> Result<SystemTime> {
    let text = rfc3339.as_str().context("not a string")?;
    humantime::parse_rfc3339(text).with_context(|| format!("bad time {text}"))
}

#[test]
fn seed_storm_is_reported_while_the_client_hangs_then_times_out() -> Result<()> {
    let mut scenario = SeedScenario::start("seed", &Options::default(), &[])?;
    // Idle past the middlebox's timeout: it forgets the flow, nobody knows.
    let idle_gap = scenario.resume_after_forgotten("set")?;
    let started = scenario.finding("storm_started", Duration::from_secs(30))?;
    let SeedScenario {
        client,
        connmon,
        topology,
    } = &mut scenario;
    let seen_at = SystemTime::now();
    // Reported while the SET is still hanging.
    ensure!(
        !client
            .stdout
            .snapshot()
            .iter()
            .any(|line| line.starts_with("ok") || line.starts_with("error")),
        "the client finished before the storm was reported: {:?}",
        client.stdout.snapshot()
    );
    assert_eq!(started["pid"], client.pid(), "{started}");
    assert_eq!(started["tid"], client.pid(), "{started}");
    assert_eq!(started["comm"], "cmt-redis-clien", "{started}");
    assert_eq!(
        started["remote"],
        format!("{CACHE_V4}:{REDIS_PORT}"),
        "{started}"
    );
    assert_eq!(started["role"], "client", "{started}");
    assert_eq!(started["service"], "redis", "{started}");
    let idle_seconds = started["idle_seconds"].as_f64().context("idle_seconds")?;
    assert!(
        idle_seconds >= idle_gap.as_secs_f64() - 0.05,
        "idle_seconds {idle_seconds} < gap {idle_gap:?}"
    );
    assert!(
        started["retransmits"].as_u64().unwrap_or(0) >= 3,
        "{started}"
    );
    let gives_up = started["gives_up_in_seconds"]
        .as_f64()
        .context("gives_up_in_seconds")?;
    assert!(
        (1.0..30.0).contains(&gives_up),
        "tcp_retries2=4 gives up within seconds, not {gives_up}"
    );
    let hint = started["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("tcp-keepalive") && hint.contains("TCP_USER_TIMEOUT"),
        "{hint}"
    );
    assert!(
        started["cgroup"].is_string() && started["exe"].is_string(),
        "{started}"
    );
    // Within a second of the retransmit that confirmed it.
    let lag = seen_at
        .duration_since(wall_time(&started["confirmed_at"])?)
        .unwrap_or_default();
    assert!(
        lag < Duration::from_secs(1),
        "storm_started {lag:?} after the confirming retransmit"
    );

    let ended = first_finding(
        connmon,
        "storm_ended",
        topology.app.inode(),
        Duration::from_secs(60),
    )?;
    assert_eq!(ended["outcome"], "timed_out", "{ended}");
    assert_eq!(ended["storm_id"], started["storm_id"]);
    assert_eq!(ended["pid"], client.pid());
    assert!(
        ended["duration_seconds"].as_f64().unwrap_or(0.0) >= gives_up,
        "{ended}"
    );
    let outcome = client.stdout.wait_for("error", Duration::from_secs(30))?;
    ensure!(
        outcome.contains("timed out") || outcome.contains("110"),
        "client saw {outcome}"
    );
    assert_eq!(
        connmon.signal(libc::SIGINT, Duration::from_secs(10))?,
        Some(0)
    );
    Ok(())
}

#[test]
fn redis_server_retransmitting_to_a_dead_subscriber_is_a_server_storm() -> Result<()> {
    let mut topology = Topology::build("server", &Options::default())?;
    topology.start_redis()?;
    let connmon = daemon()?;
    let mut command: Command = topology.app_command(env!("CARGO_BIN_EXE_cmt-redis-client"));
    command.args([
        "subscribe",
        &format!("redis://{CACHE_V4}:{REDIS_PORT}"),
        "news",
    ]);
    let _subscriber = Process::spawn("subscriber", command)?;
    _subscriber
        .stdout
        .wait_for("subscribed", Duration::from_secs(20))?;

    topology.wait_until_forgotten(Duration::from_secs(30))?;
    topology.redis_cli(&["publish", "news", "hello"])?;

    let started = first_finding(
        &connmon,
        "storm_started",
        topology.cache.inode(),
        Duration::from_secs(30),
    )?;
    assert_eq!(started["comm"], "redis-server", "{started}");
    assert_eq!(
        Some(started["pid"].as_u64().unwrap_or(0) as u32),
        topology.redis_pid(),
        "{started}"
    );
    assert_eq!(started["role"], "server", "{started}");
    assert_eq!(
        started["local"],
        format!("{CACHE_V4}:{REDIS_PORT}"),
        "{started}"
    );
    assert!(
        started["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("tcp-keepalive"),
        "{started}"
    );
    let ended = first_finding(
        &connmon,
        "storm_ended",
        topology.cache.inode(),
        Duration::from_secs(60),
    )?;
    assert_eq!(ended["outcome"], "timed_out", "{ended}");
    Ok(())
}

/// Closes the client's connection and waits until connmon has processed
/// its destruction: every event before it (and any finding) is out by then.
/// Closes the client and waits until connmon has processed everything
/// the kernel said about it: the kernel has dropped the socket's state
/// (a quiet socket's end is no record) and every record written is
/// processed.
fn close_and_sync(connmon: &Daemon, client: &mut Process) -> Result<()> {
    let tracked = "connmon_tracked_sockets{table=\"kernel\"}";
    let before = connmon.metric(tracked)?;
    ensure!(before >= 1.0, "connmon tracks the client's socket");
    client.send_line("quit")?;
    client.stdout.wait_for("closed", Duration::from_secs(20))?;
    poll::until(
        "connmon to see the socket destroyed",
        Duration::from_secs(20),
        || Ok((connmon.metric(tracked)? < before).then_some(())),
    )?;
    connmon.drained(Duration::from_secs(10))
}

#[test]
fn busy_connection_with_random_loss_is_not_an_idle_storm() -> Result<()> {
    let options = Options {
        forget_after: None,
        random_loss_percent: Some(10),
        tcp_retries2: 15,
        ..Options::default()
    };
    let mut topology = Topology::build("lossy", &options)?;
    topology.start_redis()?;
    let connmon = daemon()?;
    let mut client = topology.redis_client(&format!("redis://{CACHE_V4}:{REDIS_PORT}"))?;
    let retransmitted_before = topology.app.retransmitted_segments()?;
    client.send_line("busy 600")?;
    client
        .stdout
        .wait_for("busy-done", Duration::from_secs(120))?;
    let retransmitted = topology.app.retransmitted_segments()? - retransmitted_before;
    ensure!(
        retransmitted > 0,
        "the lossy path caused no retransmits; the test proves nothing"
    );
    close_and_sync(&connmon, &mut client)?;
    let storms = connmon.findings("storm_started", topology.app.inode());
    assert!(
        storms.is_empty(),
        "random loss on a busy connection reported as a storm: {storms:?}"
    );
    // Each of those retransmits is counted under the client and the
    // watched destination, though a busy connection's retransmits reach
    // userspace as counts, not a record each.
    let destination = format!("destination=\"{CACHE_V4}:{REDIS_PORT}\"");
    let metrics = connmon.http_get("/metrics")?;
    let counted: f64 = metrics
        .lines()
        .filter(|line| {
            line.starts_with("connmon_retransmits_total{")
                && line.contains(&destination)
                && line.contains("role=\"client\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // nstat counts segments, connmon attempts; here a retransmit is one
    // small segment, and a failed attempt is rare.
    assert!(
        counted >= 0.9 * retransmitted as f64 && counted <= 1.1 * retransmitted as f64,
        "connmon counted {counted} retransmits, the namespace's TcpRetransSegs moved by {retransmitted}"
    );
    // And they came as counts, not as a record each.
    let count_records = connmon.metric("connmon_events_total{event=\"retransmit_counts\"}")?;
    let single_records = connmon.metric_sum("connmon_events_total{event=\"retransmit\"}")?;
    assert!(
        count_records >= 1.0 && single_records < counted,
        "{count_records} count records and {single_records} single records for {counted} retransmits"
    );
    Ok(())
}

#[test]
fn idle_connection_used_again_over_an_intact_path_is_quiet() -> Result<()> {
    let mut topology = Topology::build("intact", &Options::intact_path())?;
    topology.start_redis()?;
    let connmon = daemon()?;
    let mut client = topology.redis_client(&format!("redis://{CACHE_V4}:{REDIS_PORT}"))?;
    topology.wait_until_idle_past_threshold()?;
    client.send_line("set")?;
    client.stdout.wait_for("ok", Duration::from_secs(10))?;
    close_and_sync(&connmon, &mut client)?;
    let findings: Vec<Value> = connmon
        .records()
        .into_iter()
        .filter(|r| r["netns"] == topology.app.inode())
        .collect();
    assert!(
        findings.is_empty(),
        "an intact path gave findings: {findings:?}"
    );
    Ok(())
}

#[test]
fn middlebox_reset_after_idle_is_reported_as_reset() -> Result<()> {
    let options = Options {
        stale_flow: StaleFlow::Reset,
        ..Options::default()
    };
    let mut scenario = SeedScenario::start("reset", &options, &[])?;
    let idle_gap = scenario.resume_after_forgotten("set")?;
    scenario
        .client
        .stdout
        .wait_for("error", Duration::from_secs(20))?;

    let reset = scenario.finding("reset_after_idle", Duration::from_secs(20))?;
    assert_eq!(reset["outcome"], "reset", "{reset}");
    // No FIN came first: the path forgot the connection, not the server.
    assert_eq!(reset["cause"], "reset", "{reset}");
    assert_eq!(reset["pid"], scenario.client.pid(), "{reset}");
    assert_eq!(
        reset["remote"],
        format!("{CACHE_V4}:{REDIS_PORT}"),
        "{reset}"
    );
    assert!(
        reset["idle_seconds"].as_f64().unwrap_or(0.0) >= idle_gap.as_secs_f64() - 0.05,
        "{reset}"
    );
    let storms = scenario
        .connmon
        .findings("storm_started", scenario.topology.app.inode());
    assert!(storms.is_empty(), "a reset is not a storm: {storms:?}");
    Ok(())
}

/// A client of the kind a pool holds: connects, pings, idles for argv[2]
/// seconds without reading, then sends a command on the same connection.
const IDLE_THEN_WRITE: &str = "import socket, sys, time\n\
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
s.sendall(b'PING\\r\\n'); s.recv(100)\n\
print('connected', flush=True)\n\
time.sleep(float(sys.argv[2]))\n\
try:\n    s.sendall(b'SET key value\\r\\n'); print('reply', s.recv(100), flush=True)\n\
except OSError as e:\n    print('error', e.errno, flush=True)\n";

/// A server that closes idle clients (a real redis-server with `timeout
/// 2`): the client's next write on the closed connection gets a reset.
/// connmon tells it from a path that forgot the flow: the server's FIN came
/// first (`cause` `peer_closed`), and the hint names the pool-side fix.
#[test]
fn a_server_closing_an_idle_client_is_told_from_a_forgotten_path() -> Result<()> {
    const PORT: u16 = 6391;
    let ns = connmon_tests::netns::NetNs::create("srvclose")?;
    let redis = redis_server(&ns, &["127.0.0.1"], PORT, 2);
    let redis = Process::spawn("redis-server", redis)?;
    redis
        .stdout
        .wait_for_containing("Ready to accept connections", Duration::from_secs(10))?;
    let connmon = Daemon::start(&["--idle-threshold", "1s", "--ports", &PORT.to_string()])?;
    let mut command = ns.command("python3");
    command.args(["-c", IDLE_THEN_WRITE, &PORT.to_string(), "4"]);
    let client = Process::spawn("idle client", command)?;
    client
        .stdout
        .wait_for("connected", Duration::from_secs(10))?;

    let reset = first_finding_of(
        &connmon,
        "reset_after_idle",
        ns.inode(),
        client.pid(),
        Duration::from_secs(20),
    )?;
    assert_eq!(reset["cause"], "peer_closed", "{reset}");
    assert_eq!(
        reset["service"],
        Value::Null,
        "port {PORT} is not a known service: {reset}"
    );
    assert!(
        reset["hint"]
            .as_str()
            .is_some_and(|hint| hint.contains("server closed") && hint.contains("pool")),
        "{reset}"
    );
    assert!(
        reset["idle_seconds"].as_f64().unwrap_or(0.0) >= 3.0,
        "idle from the ping to the write: {reset}"
    );
    Ok(())
}
