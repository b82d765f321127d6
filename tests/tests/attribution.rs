//! Attribution you can trust: a connection opened before connmon started,
//! IPv6, a container-like cgroup, and identical addresses in two network
//! namespaces each get the right process.

use std::time::{Duration, Instant};

use anyhow::Result;
use connmon_tests::{
    cgroup::Cgroup,
    connmon::{Daemon, first_finding_of},
    process::Process,
    storm::send_into_blackhole_after_idle,
    topology::{CACHE_V4, CACHE_V6, Options, REDIS_PORT, Topology},
};
use serde_json::Value;

const CONTAINER_ID: &str = "3f2c1b0e9d8c7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa0099";
const POD_UID: &str = "0d5e8c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6";

/// Removes a directory tree when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn daemon() -> Result<Daemon> {
    Daemon::start(&["--idle-threshold", "2s", "--ports", &REDIS_PORT.to_string()])
}

/// The first storm in `topology`'s app namespace, which must name
/// `client`'s process.
fn storm_of(connmon: &Daemon, topology: &Topology, client: &Process) -> Result<Value> {
    first_finding_of(
        connmon,
        "storm_started",
        topology.app.inode(),
        client.pid(),
        Duration::from_secs(30),
    )
}

/// A Redis client in a new topology whose connection is idle past the
/// path's timeout: the middlebox has forgotten it. Started before connmon.
fn forgotten_connection(tag: &str) -> Result<(Topology, Process)> {
    let mut topology = Topology::build(tag, &Options::default())?;
    topology.start_redis()?;
    let client = topology.redis_client(&format!("redis://{CACHE_V4}:{REDIS_PORT}"))?;
    topology.wait_until_forgotten(Duration::from_secs(30))?;
    Ok((topology, client))
}

/// The client of a `forgotten_connection` sends again: its storm names
/// it, idle since before connmon started.
fn storm_on_resuming(connmon: &Daemon, topology: &Topology, client: &mut Process) -> Result<()> {
    client.send_line("set")?;
    let storm = storm_of(connmon, topology, client)?;
    assert!(
        storm["idle_seconds"].as_f64().unwrap_or(0.0) >= 3.0,
        "idle since before connmon: {storm}"
    );
    Ok(())
}

/// The seed scenario over IPv6, with the client in a Kubernetes-style
/// container cgroup, connected before connmon started.
#[test]
fn connection_older_than_connmon_in_a_container_over_ipv6_is_attributed() -> Result<()> {
    let mut topology = Topology::build("v6", &Options::default())?;
    topology.start_redis()?;
    let cgroup = Cgroup::create(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CONTAINER_ID}.scope",
        POD_UID.replace('-', "_")
    ))?;
    let mut client = topology.redis_client(&format!("redis://[{CACHE_V6}]:{REDIS_PORT}"))?;
    cgroup.add(client.pid())?;

    // The kubelet's pod log directory, as on a node, names the pod.
    let pods = std::env::temp_dir().join(format!("cmt-pods-{}", std::process::id()));
    std::fs::create_dir_all(pods.join(format!("payments_invite-svc-7d9f8b_{POD_UID}")))?;
    let _pods_cleanup = RemoveOnDrop(pods.clone());

    // connmon starts after the connection is established and idle.
    let pods_arg = pods.to_string_lossy().into_owned();
    let connmon = Daemon::start(&[
        "--idle-threshold",
        "2s",
        "--ports",
        &REDIS_PORT.to_string(),
        "--pod-metadata-dir",
        &pods_arg,
    ])?;
    topology.wait_until_forgotten(Duration::from_secs(30))?;
    client.send_line("set")?;

    let storm = storm_of(&connmon, &topology, &client)?;
    assert_eq!(storm["comm"], "cmt-redis-clien", "{storm}");
    assert_eq!(
        storm["remote"],
        format!("[{CACHE_V6}]:{REDIS_PORT}"),
        "{storm}"
    );
    assert_eq!(storm["netns"], topology.app.inode(), "{storm}");
    assert_eq!(storm["container_id"], CONTAINER_ID, "{storm}");
    assert_eq!(storm["pod_uid"], POD_UID, "{storm}");
    assert_eq!(storm["pod_namespace"], "payments", "{storm}");
    assert_eq!(storm["pod_name"], "invite-svc-7d9f8b", "{storm}");
    assert!(
        storm["idle_seconds"].as_f64().unwrap_or(0.0) >= 2.0,
        "{storm}"
    );
    assert!(
        storm["owner_source"] == "proc" || storm["owner_source"] == "send",
        "an old socket's owner comes from /proc, then from its first send: {storm}"
    );
    // The thread that wrote the SET is named once the kernel saw it write.
    assert_eq!(storm["tid"], client.pid(), "{storm}");
    drop(client);
    drop(cgroup);
    Ok(())
}

/// A connection that predates connmon, used only after connmon started:
/// its idle time comes from the kernel's tcp_info at start-up.
#[test]
fn connection_older_than_connmon_gets_its_idle_time_from_tcp_info() -> Result<()> {
    let (topology, mut client) = forgotten_connection("old")?;
    let connmon = daemon()?;
    let learned = connmon.stderr().join("\n");
    assert!(
        learned.contains("learned existing watched connections"),
        "{learned}"
    );
    storm_on_resuming(&connmon, &topology, &mut client)?;
    Ok(())
}

/// Two namespaces with the very same addresses and ports: two connections,
/// each storm attributed to its own client.
#[test]
fn identical_addresses_in_two_namespaces_are_two_connections() -> Result<()> {
    let mut first = Topology::build("twin-a", &Options::default())?;
    let mut second = Topology::build("twin-b", &Options::default())?;
    first.start_redis()?;
    second.start_redis()?;
    let connmon = daemon()?;
    let url = format!("redis://{CACHE_V4}:{REDIS_PORT}");
    let mut client_a = first.redis_client(&url)?;
    let mut client_b = second.redis_client(&url)?;
    first.wait_until_forgotten(Duration::from_secs(30))?;
    second.wait_until_forgotten(Duration::from_secs(30))?;
    client_a.send_line("set")?;
    client_b.send_line("set")?;
    let storm_a = storm_of(&connmon, &first, &client_a)?;
    let storm_b = storm_of(&connmon, &second, &client_b)?;
    assert_eq!(
        storm_a["remote"], storm_b["remote"],
        "same addresses by construction"
    );
    assert_ne!(storm_a["netns"], storm_b["netns"]);
    assert_ne!(storm_a["storm_id"], storm_b["storm_id"]);
    Ok(())
}

/// Least privilege: as user nobody with the documented capabilities but
/// without CAP_SYS_ADMIN, connmon cannot enter other network namespaces to
/// learn old connections up front; the kernel's own receive timestamps
/// still give the idle gap, and the storm still names the process.
#[test]
fn without_cap_sys_admin_an_old_connection_is_still_caught() -> Result<()> {
    let (topology, mut client) = forgotten_connection("lpriv")?;
    let connmon = Daemon::start_as_nobody(
        "+bpf,+perfmon,+net_admin,+sys_ptrace,+dac_read_search",
        &["--idle-threshold", "2s", "--ports", &REDIS_PORT.to_string()],
    )?;
    let stderr = connmon.stderr().join("\n");
    assert!(
        stderr.contains("CAP_SYS_ADMIN"),
        "the missing capability is named: {stderr}"
    );
    storm_on_resuming(&connmon, &topology, &mut client)?;
    Ok(())
}

/// A hardened host's `/proc` (`hidepid=2`: other users' processes are
/// invisible without ptrace access): connmon as user nobody with the
/// documented capabilities still learns a connection older than itself
/// from `/proc` (CAP_SYS_PTRACE is what hidepid checks), and the storm
/// names the right process and executable. (Without CAP_SYS_PTRACE the
/// storm still names the right pid, from the kernel's send hook, with no
/// executable: the documented degradation.)
#[test]
fn with_hidepid_proc_an_old_connection_is_attributed_from_proc() -> Result<()> {
    let (topology, mut client) = forgotten_connection("hidepid")?;
    let (nobody, dir) = connmon_tests::connmon::as_nobody(
        "+bpf,+perfmon,+net_admin,+sys_ptrace,+dac_read_search,+sys_admin",
        "hidepid",
    )?;
    let command = connmon_tests::connmon::with_proc_mounted(nobody, "hidepid=2");
    let connmon = Daemon::start_command(
        command,
        &["--idle-threshold", "2s", "--ports", &REDIS_PORT.to_string()],
        dir,
    )?;
    // The daemon really sees a hidepid /proc.
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", connmon.pid()))?;
    assert!(
        mounts
            .lines()
            .any(|line| line.contains(" /proc ") && line.contains("hidepid")),
        "connmon's /proc is not mounted with hidepid: {mounts}"
    );
    client.send_line("set")?;
    let storm = storm_of(&connmon, &topology, &client)?;
    assert_eq!(
        storm["owner_source"], "proc",
        "learned at start-up: {storm}"
    );
    assert!(
        storm["exe"]
            .as_str()
            .is_some_and(|exe| exe.ends_with("cmt-redis-client")),
        "{storm}"
    );
    Ok(())
}

/// A port connmon does not watch: the kernel keeps no state for its
/// sockets and counts a retransmit under the socket's cookie, with the
/// socket's own cgroup; connmon names the process lazily. The stuck
/// connection shows up as timeout retransmits of its process and
/// container, destination `other`, role client.
#[test]
fn retransmits_on_an_unwatched_port_count_under_their_process_and_container() -> Result<()> {
    const ID: &str = "c0ffee0123456789c0ffee0123456789c0ffee0123456789c0ffee0123456789";
    let ns = connmon_tests::netns::NetNs::create("unwatched")?;
    ns.sysctl("net.ipv4.tcp_retries2", "4")?;
    let connmon = Daemon::start(&["--ports", "7301"])?;
    let cgroup = Cgroup::create(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
        POD_UID.replace('-', "_")
    ))?;
    let server = connmon_tests::peer::server(&ns, "127.0.0.1:7302")?;
    // In the container's cgroup from the start: the kernel records a
    // socket's cgroup when the socket is created.
    let mut client = connmon_tests::peer::client(&ns, "127.0.0.1:7302", |command| {
        cgroup.spawn_inside(command)
    })?;
    ns.blackhole_tcp_port(7302)?;
    client.send_line("into the void")?;
    let series = format!(
        "connmon_retransmits_total{{container=\"{}\",destination=\"other\",kind=\"timeout\",process=\"tcp-peer\",role=\"client\"}}",
        &ID[..12]
    );
    // With tcp_retries2 = 4 the kernel makes 4 RTO retransmits, then gives up.
    let counted = connmon_tests::poll::until(
        "the retransmits to be counted under their owner",
        Duration::from_secs(40),
        || {
            // The series appears with the first count.
            let counted = connmon.metric_if_present(&series)?;
            Ok(counted.filter(|counted| *counted >= 4.0))
        },
    )
    .map_err(|error| {
        let metrics = connmon.http_get("/metrics").unwrap_or_default();
        let retransmits: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("connmon_retransmits_total"))
            .collect();
        error.context(format!("connmon_retransmits_total: {retransmits:?}"))
    })?;
    assert!(counted >= 4.0, "{counted}");
    // Nothing about it reached the event stream: the port is not watched.
    assert!(
        connmon.findings("storm_started", ns.inode()).is_empty(),
        "an unwatched port gave a storm"
    );
    drop(client);
    drop(server);
    Ok(())
}

/// A socket that starts retransmitting just after connmon looked up the
/// owners of others is still named while its owner lives: the first lookup
/// of a socket does not wait behind the scan interval other sockets set.
/// (The late client gives up, and exits, about 6 s after its first
/// retransmit: tcp_retries2 = 4.)
#[test]
fn a_socket_that_retransmits_just_after_a_lookup_is_named_while_its_owner_lives() -> Result<()> {
    const ID: &str = "c0ffee0123456789c0ffee0123456789c0ffee0123456789c0ffee0123456789";
    let ns = connmon_tests::netns::NetNs::create("unwatched2")?;
    ns.sysctl("net.ipv4.tcp_retries2", "4")?;
    let connmon = Daemon::start(&["--ports", "7301"])?;
    let cgroup = Cgroup::create(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
        POD_UID.replace('-', "_")
    ))?;
    let server = connmon_tests::peer::server(&ns, "127.0.0.1:7302")?;
    let mut first = connmon_tests::peer::client(&ns, "127.0.0.1:7302", |command| {
        cgroup.spawn_inside(command)
    })?;
    let mut late = connmon_tests::peer::client(&ns, "127.0.0.1:7302", |command| {
        command.env("TCP_PEER_COMM", "late-peer");
        cgroup.spawn_inside(command)
    })?;
    ns.blackhole_tcp_port(7302)?;
    let series = |process: &str| {
        format!(
            "connmon_retransmits_total{{container=\"{}\",destination=\"other\",kind=\"timeout\",process=\"{process}\",role=\"client\"}}",
            &ID[..12]
        )
    };
    first.send_line("into the void")?;
    // The first client's series appears in the read that looked it up.
    connmon_tests::poll::until(
        "the first client to be named",
        Duration::from_secs(30),
        || connmon.metric_if_present(&series("tcp-peer")),
    )?;
    late.send_line("into the void, later")?;
    let counted = connmon_tests::poll::until(
        "the late client's retransmits to be counted under its name",
        Duration::from_secs(40),
        || {
            Ok(connmon
                .metric_if_present(&series("late-peer"))?
                .filter(|n| *n >= 4.0))
        },
    )
    .map_err(|error| {
        let metrics = connmon.http_get("/metrics").unwrap_or_default();
        let retransmits: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("connmon_retransmits_total"))
            .collect();
        error.context(format!("connmon_retransmits_total: {retransmits:?}"))
    })?;
    assert!(counted >= 4.0, "{counted}");
    drop((first, late, server));
    Ok(())
}

/// Kills a process by pid when dropped (one the test did not spawn
/// itself, e.g. a forked child).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid this test learned from the process
        // itself; a process already gone only makes it fail.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// A reused pid: the process that last used a socket exits (a child keeps
/// the socket) before its storm is confirmed, and a new, unrelated process
/// gets its pid. The storm names the old process (pid and command from the
/// kernel), never the new one's details: connmon compares each pid's start
/// time with the kernel's before it reads /proc.
#[test]
fn a_reused_pid_never_lends_its_details_to_a_storm() -> Result<()> {
    const PORT: u16 = 7104;
    let ns = connmon_tests::netns::NetNs::create("pidreuse")?;
    ns.sysctl("net.ipv4.tcp_retries2", "4")?;
    let connmon = Daemon::start(&["--idle-threshold", "1s", "--ports", &PORT.to_string()])?;
    let addr = format!("127.0.0.1:{PORT}");
    let _server = connmon_tests::peer::server(&ns, &addr)?;
    let mut command =
        ns.command(&connmon_tests::connmon::built_binary("tcp-peer").to_string_lossy());
    command.args(["handoff", &addr]);
    let mut sender = Process::spawn("tcp-peer handoff", command)?;
    sender
        .stdout
        .wait_for("connected", Duration::from_secs(10))?;
    // An idle gap past the 1 s threshold.
    let idle_until = Instant::now() + Duration::from_millis(1500);
    send_into_blackhole_after_idle(&ns, PORT, &mut sender, idle_until, "SET key value")?;
    let holder: i32 = sender
        .stdout
        .wait_for("holder ", Duration::from_secs(10))?
        .trim_start_matches("holder ")
        .parse()?;
    let _holder = KillOnDrop(holder);
    sender.stdout.wait_for("sent", Duration::from_secs(10))?;
    let old_pid = sender.pid();
    connmon_tests::poll::until("the sender to exit", Duration::from_secs(10), || {
        Ok(sender.try_exit_code()?.map(|_| ()))
    })?;

    // The next pid the kernel hands out is the sender's (the host's pid
    // namespace; no thread of this test may fork in between).
    let mut imposter = None;
    for _ in 0..20 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (old_pid - 1).to_string())?;
        let child = std::process::Command::new("sleep").arg("30").spawn()?;
        let guard = KillOnDrop(child.id() as i32);
        if child.id() == old_pid {
            imposter = Some((child, guard));
            break;
        }
    }
    let Some((_imposter, _imposter_guard)) = imposter else {
        anyhow::bail!("could not hand pid {old_pid} to a new process in 20 tries");
    };

    let storm = connmon_tests::poll::until(
        "the storm of the old process",
        Duration::from_secs(30),
        || {
            Ok(connmon
                .findings("storm_started", ns.inode())
                .into_iter()
                .next())
        },
    )?;
    assert_eq!(storm["pid"], old_pid, "{storm}");
    assert_eq!(
        storm["comm"], "tcp-peer",
        "the kernel's name for the old process: {storm}"
    );
    assert!(
        !storm["exe"]
            .as_str()
            .is_some_and(|exe| exe.contains("sleep")),
        "the new process's executable was lent to the storm: {storm}"
    );
    Ok(())
}
