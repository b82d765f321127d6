//! `connmon run`: the daemon. Kernel events flow one way through the socket
//! table and the storm detector; findings go to stdout and the HTTP API.

use std::{collections::HashMap, io::Write, sync::Arc, time::Duration};

use anyhow::Context as _;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::{
    attribution::{
        Attributor,
        existing::OwnerResolver,
        pods::PodDirectory,
        unwatched::{UnwatchedRetransmitters, resolve_from_proc},
    },
    capture::{Capture, reader},
    clock::{WallClock, monotonic_now_ns},
    commands::audit,
    config::Settings,
    detect::{Detector, DetectorConfig, Finding},
    event::SocketEvent,
    failfast::FailFast,
    http::{self, KernelSources, Status},
    metrics::{DEFAULT_SERIES_CAP, Metrics},
    output::{
        Format,
        alerts::{self, AlertConfig, AlertQueue},
        report::{Reporter, ServiceNames, text_line},
    },
    shutdown,
    sockets::SocketTable,
};

/// Programs attached, maps open: the capabilities that did it go (see
/// `privileges::steady_state`). A failure is logged and connmon runs on
/// with what it has: it is no worse than before.
fn drop_capabilities(settings: &Settings) {
    use crate::privileges;
    let Some(held) = privileges::effective() else {
        warn!("cannot read the effective capabilities; none dropped");
        return;
    };
    let keep = privileges::steady_state(
        held,
        settings.fail_fast == crate::failfast::FailFastMode::On,
        privileges::kernel_before_5_19(),
    );
    match privileges::drop_all_threads_to(keep) {
        Ok(()) => info!(
            kept = ?privileges::names(keep),
            dropped = privileges::names(held & !keep).len(),
            "capabilities not needed after attaching dropped"
        ),
        Err(error) => warn!(%error, "cannot drop capabilities after attaching"),
    }
}

/// Tells systemd how the service is (Type=notify: ready once the programs
/// are attached, as /readyz); nothing without `NOTIFY_SOCKET`.
fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        warn!(%error, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// How long receivers get at exit to deliver the last alerts.
const ALERT_FLUSH_DEADLINE: Duration = Duration::from_secs(1);

/// How often silent episodes are expired.
const EXPIRE_INTERVAL: Duration = Duration::from_secs(10);

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let status = Arc::new(Status::new(
        Metrics::new(DEFAULT_SERIES_CAP).context("registering metrics")?,
    ));
    let server = http::serve(settings.listen, status.clone(), &settings.web_config).await?;

    let mut capture =
        Capture::start(&settings.capture_config()).context("starting kernel capture")?;
    let ring = capture.take_events()?;
    status.metrics.set_degraded_hooks(capture.degraded());
    let cookies_are_addresses = capture.store() == crate::capture::StateStore::ByAddress;

    prime_existing_sockets(&mut capture, &settings.capture_config());
    crate::memory::release_freed_memory();
    let loss_log = spawn_loss_log(status.clone());
    let unwatched =
        spawn_unwatched_retransmits(capture.take_unwatched_retransmits()?, status.clone());
    let stats = Arc::new(reader::ReaderStats::default());
    let (tx, mut rx) = reader::channel();
    status.set_kernel_sources(KernelSources {
        counters: capture.take_counters()?,
        programs: capture.program_stats(settings.bpf_run_time_stats),
        reader: stats.clone(),
    });
    let reader = reader::spawn(ring, tx, stats).context("polling the event ring buffer")?;
    drop_capabilities(&settings);
    status.set_ready(true);
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    info!(
        ports = ?settings.ports,
        all_ports = settings.all_ports,
        netns = ?settings.netns,
        prometheus_url = ?settings.prometheus_url,
        idle_threshold = ?settings.idle_threshold,
        confirm_retransmits = settings.confirm_retransmits,
        listen = %settings.listen,
        "watching for retransmit storms on idle connections"
    );

    let mut reporter = Reporter::new(
        WallClock::new(),
        Attributor::new("/proc"),
        OwnerResolver::new("/proc"),
        ServiceNames::new(settings.services.clone()),
    );
    if let Some(dir) = &settings.pod_metadata_dir {
        reporter = reporter.with_pods(PodDirectory::new(dir));
    }
    let alert_config = AlertConfig {
        alertmanager_urls: settings.alertmanager_urls.clone(),
        webhook_urls: settings.webhook_urls.clone(),
        ca_certs: settings.alert_ca_certs.clone(),
        instance: settings.node_name.clone().unwrap_or_else(hostname),
        runbook_url: settings.runbook_url.clone(),
    };
    let (alerts, alert_senders) = if alert_config.is_enabled() {
        let (queue, senders) = alerts::spawn(alert_config, status.metrics.alert_deliveries());
        (Some(queue), Some(senders))
    } else {
        (None, None)
    };
    let fail_fast =
        FailFast::new(settings.fail_fast, "/proc").with_cookies_as_addresses(cookies_are_addresses);
    if fail_fast.is_enabled() {
        info!(mode = ?settings.fail_fast, "fail-fast is on: sockets of confirmed storms are aborted");
    }
    let mut pipeline = Pipeline {
        fail_fast,
        sockets: SocketTable::default().with_watched_ports(if settings.all_ports {
            Default::default()
        } else {
            settings.ports.clone()
        }),
        detector: Detector::new(DetectorConfig {
            zero_window_confirm_ns: settings.zero_window_confirm.as_nanos() as u64,
            ..DetectorConfig::new(
                settings.idle_threshold.as_nanos() as u64,
                settings.confirm_retransmits,
            )
        }),
        reporter,
        status: status.clone(),
        alerts,
        settings,
        latest_fleet: LatestFleet::default(),
    };
    let at_risk = spawn_at_risk_audits(
        &pipeline.settings,
        status.clone(),
        pipeline.latest_fleet.clone(),
    );
    let (stuck_tx, mut stuck_scans) = tokio::sync::mpsc::channel(1);
    let stuck_scanner = crate::stuck_scan::spawn(
        crate::stuck_scan::ScanScope {
            ports: if pipeline.settings.all_ports {
                Default::default()
            } else {
                pipeline.settings.ports.clone()
            },
            netns: pipeline.settings.netns,
        },
        pipeline.settings.stuck_scan_interval,
        stuck_tx,
    );
    let mut losses = LossReconciler::default();
    let mut expire = tokio::time::interval(EXPIRE_INTERVAL);
    let mut stop = std::pin::pin!(shutdown::signal());
    loop {
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => {
                    // A batch's findings go out together: one write for
                    // thousands of storms confirmed in the same jiffy.
                    let findings: Vec<Finding> = batch
                        .events
                        .into_iter()
                        .flat_map(|event| pipeline.event(event))
                        .collect();
                    pipeline.report(&findings);
                }
                None => {
                    warn!("event reader stopped");
                    break;
                }
            },
            Some(scanned) = stuck_scans.recv() => {
                pipeline.status.metrics.observe_stuck_scan(&scanned.cost);
                let findings = pipeline.stuck_scan(scanned.scan);
                pipeline.report(&findings);
            }
            _ = expire.tick() => {
                let now = monotonic_now_ns();
                let findings = pipeline.detector.expire(now);
                // The same silence after which the detector forgets a socket.
                let forgotten = pipeline.sockets.expire(now, pipeline.detector.forget_after_ns());
                if forgotten > 0 {
                    debug!(forgotten, "sockets forgotten after silence (destroy record lost?)");
                }
                // Tables that grew and shrank (a burst of connections) leave
                // freed memory in glibc's heap: hand it back, so resident
                // memory follows what is tracked now.
                crate::memory::release_freed_memory();
                pipeline.status.metrics.set_userspace_sockets(pipeline.sockets.len());
                let expired = pipeline
                    .status
                    .metrics
                    .expire_quiet_series(std::time::Instant::now(), pipeline.settings.series_expiry);
                if expired > 0 {
                    debug!(expired, "metric label sets quiet past the series expiry removed");
                }
                pipeline.report(&findings);
                let lost = pipeline
                    .status
                    .kernel_counters()
                    .map_or(0, |counters| counters.get(monitor_common::counters::LOST_RINGBUF_FULL));
                if losses.due(lost) {
                    let findings = tokio::task::block_in_place(|| {
                        let live = LiveSockets::of(pipeline.detector.active_storms(), "/proc");
                        pipeline.detector.reconcile(now, |storm| live.may_exist(storm))
                    });
                    if !findings.is_empty() {
                        warn!(
                            ended = findings.len(),
                            "storms whose socket is gone ended as unknown: records of their end may have been lost (connmon_lost_records_total)"
                        );
                    }
                    pipeline.report(&findings);
                }
            }
            signal = &mut stop => {
                info!(signal = signal.as_str(), "stopping");
                notify_systemd(&[sd_notify::NotifyState::Stopping]);
                break;
            }
        }
    }
    // Storms still going end as monitor_stopped, so every start has an end.
    let findings = pipeline.detector.stop(monotonic_now_ns());
    pipeline.report(&findings);
    status.set_ready(false);
    // Let the receivers deliver the final storm_ended alerts, within a
    // bound that leaves the exit well inside Kubernetes' grace period
    // whatever a receiver does (dropping the pipeline drops the queue).
    drop(pipeline);
    if let Some(senders) = alert_senders {
        senders.shutdown(ALERT_FLUSH_DEADLINE).await;
    }
    reader.abort();
    at_risk.abort();
    stuck_scanner.abort();
    loss_log.abort();
    unwatched.abort();
    drop(capture);
    server.abort();
    info!("kernel programs detached");
    Ok(())
}

/// When to look for storms whose end was lost: one expiry tick after the
/// kernel's lost-record counter moved, so every record written before the
/// loss has been processed.
#[derive(Debug, Default)]
struct LossReconciler {
    seen: u64,
    pending: bool,
}

impl LossReconciler {
    /// Called every expiry tick with the kernel's lost-record count;
    /// whether to reconcile now.
    fn due(&mut self, lost: u64) -> bool {
        let due = std::mem::take(&mut self.pending);
        if lost > self.seen {
            self.seen = lost;
            self.pending = true;
        }
        due
    }
}

/// The sockets of storms in progress that still exist, from one sock_diag
/// dump per network namespace (entered through an owner's
/// `/proc/PID/ns/net`). A socket sock_diag does not list is gone (or
/// closed); a storm whose namespace cannot be read is kept.
struct LiveSockets {
    cookies: std::collections::HashSet<u64>,
    unreadable: std::collections::HashSet<u32>,
}

impl LiveSockets {
    fn of<'a>(storms: impl Iterator<Item = &'a crate::detect::Storm>, proc_root: &str) -> Self {
        use crate::attribution::procfs;
        let root = std::path::Path::new(proc_root);
        let mut by_netns: HashMap<u32, Vec<u32>> = HashMap::new();
        for storm in storms {
            let pids = by_netns.entry(storm.connection.netns).or_default();
            pids.extend(storm.owner.as_ref().map(|owner| owner.pid));
        }
        let mut live = Self {
            cookies: Default::default(),
            unreadable: Default::default(),
        };
        // Owners may have exited (a pool's process after its connections
        // failed): any process still in the namespace will do.
        let mut others: Option<std::collections::BTreeMap<u32, Vec<u32>>> = None;
        for (netns, pids) in by_netns {
            let owner = pids
                .iter()
                .copied()
                .find(|pid| procfs::netns_inode(root, *pid) == Some(netns));
            let member = owner.or_else(|| {
                others
                    .get_or_insert_with(|| crate::attribution::existing::processes_by_netns(root))
                    .get(&netns)
                    .and_then(|pids| pids.first().copied())
            });
            let entered =
                member.map(|pid| crate::sockdiag::dump_tcp(Some(&procfs::netns_file(root, pid))));
            match entered {
                Some(Ok(sockets)) => live.cookies.extend(sockets.iter().map(|s| s.cookie)),
                _ => {
                    live.unreadable.insert(netns);
                }
            }
        }
        live
    }

    fn may_exist(&self, storm: &crate::detect::Storm) -> bool {
        self.cookies.contains(&storm.cookie) || self.unreadable.contains(&storm.connection.netns)
    }
}

/// Audits the watched connections periodically, off the async threads, and
/// exports how many will hang on next use.
/// The fleet's latest windows (`--prometheus-url`), shared by the at-risk
/// audits that fetch them and the findings' hints.
type LatestFleet = Arc<std::sync::Mutex<Option<crate::fleet::FleetTimeouts>>>;

fn spawn_at_risk_audits(
    settings: &Settings,
    status: Arc<Status>,
    latest_fleet: LatestFleet,
) -> tokio::task::JoinHandle<()> {
    let (ports, all_ports, paths, netns) = (
        settings.ports.clone(),
        settings.all_ports,
        settings.path_timeouts.clone(),
        settings.netns,
    );
    let prometheus_url = settings.prometheus_url.clone();
    let mut tick = tokio::time::interval(settings.at_risk_interval);
    tokio::spawn(async move {
        loop {
            tick.tick().await;
            let (audited_ports, paths) = (ports.clone(), paths.clone());
            let prometheus_url = prometheus_url.clone();
            let latest_fleet = latest_fleet.clone();
            let Ok(report) = tokio::task::spawn_blocking(move || {
                // The fleet's evidence when it answers; the configured path
                // timeouts (and a warning) when it does not.
                let fleet = prometheus_url.as_deref().and_then(|url| {
                    crate::fleet::FleetTimeouts::query(url, Duration::from_secs(5))
                        .inspect_err(|error| {
                            warn!(%error, "no fleet path timeouts this round; at-risk uses the configured ones");
                        })
                        .ok()
                });
                if let (Some(fleet), Ok(mut latest)) = (&fleet, latest_fleet.lock()) {
                    *latest = Some(fleet.clone());
                }
                audit::audit(&audited_ports, all_ports, &paths, Default::default(), fleet)
            })
            .await
            else {
                continue;
            };
            let mut counts: HashMap<(String, String, String), i64> = HashMap::new();
            let in_scope = |netns_of: u32| netns.is_none_or(|netns| netns == netns_of);
            for connection in report
                .connections
                .iter()
                .filter(|c| c.assessment.at_risk && in_scope(c.netns))
            {
                let container = crate::attribution::container::short_id(
                    connection.container_id.as_deref().unwrap_or(""),
                );
                let key = (
                    connection.comm.clone().unwrap_or_else(|| "unknown".into()),
                    container,
                    watched_endpoint(&connection.local, &connection.remote, &ports, all_ports),
                );
                *counts.entry(key).or_default() += 1;
            }
            status.metrics.set_at_risk(&counts);
        }
    })
}

/// The watched endpoint of a connection, as the other metrics' `destination`:
/// our side for a server (its local port is watched), the far side for a
/// client. Never a client's ephemeral port, which would make a label set per
/// connection. With every port watched, the lower port is taken for the
/// service's.
fn watched_endpoint(
    local: &str,
    remote: &str,
    ports: &std::collections::BTreeSet<u16>,
    all_ports: bool,
) -> String {
    let port = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
    };
    let local_is_service = match (port(local), port(remote)) {
        (Some(l), Some(r)) if all_ports => l < r,
        (Some(l), _) => ports.contains(&l),
        _ => false,
    };
    if local_is_service { local } else { remote }.to_string()
}

/// How often kernel-side losses are checked for the log.
const LOSS_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Logs records the kernel lost, at most once per interval (they are
/// counted and exported at every scrape).
fn spawn_loss_log(status: Arc<Status>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LOSS_LOG_INTERVAL);
        let mut last_lost = [0u64; 2];
        loop {
            tick.tick().await;
            use monitor_common::counters::{LOST_RINGBUF_FULL, LOST_SOCKET_MAP_FULL};
            let Some(counters) = status.kernel_counters() else {
                continue;
            };
            for (slot, (index, reason)) in [
                (LOST_RINGBUF_FULL, "ring_buffer_full"),
                (LOST_SOCKET_MAP_FULL, "socket_map_full"),
            ]
            .into_iter()
            .enumerate()
            {
                let total = counters.get(index);
                if total > last_lost[slot] {
                    warn!(
                        reason,
                        lost = total - last_lost[slot],
                        total,
                        "kernel records lost (connmon_lost_records_total)"
                    );
                    last_lost[slot] = total;
                }
            }
        }
    })
}

/// How often the kernel's per-socket retransmit counts of unwatched sockets
/// are read and handed out per owner.
const UNWATCHED_INTERVAL: Duration = Duration::from_secs(5);

/// Reads the unwatched sockets' retransmit counts periodically, off the
/// async threads (one syscall per entry, and /proc reads to name owners,
/// rate-bounded in `UnwatchedRetransmitters`).
fn spawn_unwatched_retransmits(
    map: aya::maps::HashMap<
        aya::maps::MapData,
        u64,
        monitor_common::counters::UnwatchedRetransmits,
    >,
    status: Arc<Status>,
) -> tokio::task::JoinHandle<()> {
    let shared = Arc::new(std::sync::Mutex::new((
        map,
        UnwatchedRetransmitters::default(),
    )));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UNWATCHED_INTERVAL);
        loop {
            tick.tick().await;
            let shared = shared.clone();
            let Ok(increments) = tokio::task::spawn_blocking(move || {
                let Ok(mut guard) = shared.lock() else {
                    return Vec::new();
                };
                let (map, table) = &mut *guard;
                let entries: Vec<_> = map.iter().filter_map(Result::ok).collect();
                table.account(std::time::Instant::now(), &entries, |pending| {
                    resolve_from_proc(std::path::Path::new("/proc"), pending)
                })
            })
            .await
            else {
                continue;
            };
            status.metrics.observe_unwatched_retransmits(&increments);
        }
    })
}

/// This machine's hostname, for the `instance` of alerts.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Learns the watched connections that predate the daemon (owners from
/// /proc, last activity from tcp_info) and hands them to the kernel.
pub fn prime_existing_sockets(capture: &mut Capture, config: &crate::capture::CaptureConfig) {
    let ports = config.watched_ports.clone();
    let all_ports = config.watch_all_ports;
    let watched = move |local: u16, remote: u16| {
        all_ports || ports.contains(&local) || ports.contains(&remote)
    };
    let known = crate::attribution::existing::inventory(
        std::path::Path::new("/proc"),
        &watched,
        monotonic_now_ns(),
    );
    let unowned = known
        .iter()
        .filter(|socket| socket.state.owner.tgid == 0)
        .count();
    let shared = known.iter().filter(|socket| socket.holders > 1).count();
    match capture.prime_sockets(&known) {
        Ok(added) => {
            info!(
                found = known.len(),
                added, unowned, shared, "learned existing watched connections"
            );
            if added < known.len() {
                warn!(
                    found = known.len(),
                    added,
                    socket_map_entries = config.socket_map_entries,
                    "the start-up table is full: existing connections beyond --socket-map-entries get their \
                     owner when next used (a send, or /proc when a storm is reported), and their idle time \
                     from the kernel's own timestamps"
                );
            }
        }
        Err(error) => {
            warn!(%error, "cannot record existing connections; they get owners when next used");
        }
    }
}

struct Pipeline {
    fail_fast: FailFast,
    sockets: SocketTable,
    detector: Detector,
    reporter: Reporter,
    status: Arc<Status>,
    alerts: Option<AlertQueue>,
    settings: Settings,
    latest_fleet: LatestFleet,
}

impl Pipeline {
    /// With `--prometheus-url`: what the whole fleet knows about the path of
    /// a storm or reset after idle, after the node's own hint.
    fn add_fleet_hint(&self, finding: &Finding, record: &mut crate::output::report::FindingRecord) {
        // A storm's start or a reset after idle, not a server's own close.
        let Some(reuse) =
            crate::detect::reuse::failed(finding).filter(|reuse| reuse.outcome.path_forgot())
        else {
            return;
        };
        let destination = reuse
            .role
            .destination(reuse.connection.local, reuse.connection.remote)
            .to_string();
        let hint = self
            .latest_fleet
            .lock()
            .ok()
            .and_then(|fleet| fleet.as_ref()?.hint(&destination));
        if let Some(hint) = hint {
            record.hint.push(' ');
            record.hint.push_str(&hint);
        }
    }

    /// A scan's stuck sockets: roles the kernel's events gave them, owners
    /// from /proc (the scan cannot say who writes), then the detector.
    fn stuck_scan(&mut self, mut scan: crate::detect::stuck::StuckScan) -> Vec<Finding> {
        for row in &mut scan.rows {
            if let Some(role) = self.sockets.role(row.cookie) {
                row.role = role;
            }
        }
        let mut findings = self.detector.on_stuck_scan(&scan);
        for finding in &mut findings {
            if let Finding::ConnectionFailed(failure) = finding {
                failure.owner = tokio::task::block_in_place(|| {
                    self.reporter
                        .owner_of(None, failure.cookie, &failure.connection)
                });
            }
        }
        findings
    }

    fn event(&mut self, mut event: SocketEvent) -> Vec<Finding> {
        // The kernel programs see every namespace; `--netns` keeps one.
        if self
            .settings
            .netns
            .is_some_and(|netns| netns != event.connection.netns)
        {
            self.status.metrics.observe_out_of_scope(&event);
            return Vec::new();
        }
        self.sockets.observe(&mut event);
        self.status.metrics.observe_event(&event);
        if let Some(reuse) = crate::detect::reuse::survived(&event) {
            self.status.metrics.observe_idle_reuse(&reuse);
        }
        self.detector.handle(&event)
    }

    fn report(&mut self, findings: &[Finding]) {
        if findings.is_empty() {
            return;
        }
        // Buffered: written and flushed once for all of them.
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        let mut follow_ups = Vec::new();
        for finding in findings {
            self.status.metrics.observe_finding(finding);
            if let Some(reuse) = crate::detect::reuse::failed(finding) {
                self.status.metrics.observe_idle_reuse(&reuse);
            }
            let mut record = self.reporter.record(finding);
            self.add_fleet_hint(finding, &mut record);
            let line = match self.settings.output_format {
                Format::Json => serde_json::to_string(&record).unwrap_or_default(),
                Format::Text => text_line(&record),
            };
            if writeln!(out, "{line}").is_err() {
                warn!("stdout closed; findings still go to the HTTP API");
            }
            self.status.record(&record);
            if let Some(alerts) = &self.alerts {
                alerts.push(&record);
            }
            if let Finding::StormStarted(storm) = finding
                && let Some(abort) = self.fail_fast.act(storm)
            {
                self.status.metrics.observe_fail_fast(abort.result);
                let line = json!({
                    "event": "fail_fast",
                    "schema_version": crate::output::SCHEMA_VERSION,
                    "time": crate::clock::rfc3339(record.time),
                    "storm_id": abort.storm_id,
                    "pid": record.pid,
                    "comm": record.comm,
                    "local": record.local.to_string(),
                    "remote": record.remote.to_string(),
                    "netns": record.netns,
                    "dry_run": abort.dry_run,
                    "result": abort.result,
                    "error": abort.error,
                });
                if writeln!(out, "{line}").is_err() {
                    warn!("stdout closed");
                }
                if abort.result == "aborted" {
                    follow_ups.extend(self.detector.aborted(storm.cookie, monotonic_now_ns()));
                }
            }
        }
        if out.flush().is_err() {
            warn!("stdout closed; findings still go to the HTTP API");
        }
        drop(out);
        if !follow_ups.is_empty() {
            self.report(&follow_ups);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::watched_endpoint;

    #[test]
    fn at_risk_destinations_are_the_watched_endpoint_never_an_ephemeral_port() {
        let ports = [6379].into_iter().collect();
        // A client: the far side.
        assert_eq!(
            watched_endpoint("10.0.0.2:41000", "10.0.1.5:6379", &ports, false),
            "10.0.1.5:6379"
        );
        // redis-server's end of the same connection: its own side.
        assert_eq!(
            watched_endpoint("10.0.1.5:6379", "10.0.0.2:41000", &ports, false),
            "10.0.1.5:6379"
        );
        let none = Default::default();
        assert_eq!(
            watched_endpoint("[fd00::5]:5432", "[fd00::2]:50000", &none, true),
            "[fd00::5]:5432"
        );
    }
}
