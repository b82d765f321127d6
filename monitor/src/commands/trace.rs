//! `connmon trace`: the live event stream.

use std::{io::Write, sync::Arc, time::Duration};

use anyhow::Context as _;
use monitor_common::counters::{LOST_RINGBUF_FULL, LOST_SOCKET_MAP_FULL};
use tracing::{info, warn};

use crate::{
    attribution::existing::OwnerResolver,
    capture::{
        Capture,
        counters::{CounterSnapshot, KernelCounters},
        reader,
        stats::ProgramStatsReader,
    },
    cli::{TraceArgs, resolve_netns},
    clock::WallClock,
    event::{EventKind, SocketEvent},
    output::{
        Format,
        trace::{json_record, text_line},
    },
    retransmit_gaps::RetransmitGaps,
    shutdown,
    sockets::SocketTable,
};

/// How often lost-record counters are checked and reported.
const LOSS_CHECK_INTERVAL: Duration = Duration::from_secs(2);

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    let netns = args
        .netns
        .as_deref()
        .map(resolve_netns)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    // trace has no idle detection; the threshold only shapes burst times.
    let config = args
        .capture
        .to_config(monitor_common::defaults::IDLE_THRESHOLD_NS);
    let mut capture = Capture::start(&config).context("starting kernel capture")?;
    let counters = capture.take_counters()?;
    let ring = capture.take_events()?;
    let programs = capture.program_stats(false);
    super::run::prime_existing_sockets(&mut capture, &config);
    crate::memory::release_freed_memory();
    let mut owners = OwnerResolver::new("/proc");
    let stats = Arc::new(reader::ReaderStats::default());
    let (tx, mut rx) = reader::channel();
    let reader = reader::spawn(ring, tx, stats.clone()).context("polling the event ring buffer")?;
    info!(ports = ?config.watched_ports, all_ports = config.watch_all_ports, "tracing");

    let clock = WallClock::new();
    let format = args.format();
    let mut out = std::io::stdout().lock();
    let mut losses = LossReporter::default();
    let mut sockets = SocketTable::default();
    let mut gaps = RetransmitGaps::new(crate::sockets::DEFAULT_CAPACITY);
    let mut loss_tick = tokio::time::interval(LOSS_CHECK_INTERVAL);
    let mut stop = std::pin::pin!(shutdown::signal());
    'events: loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(batch) = batch else { break };
                for mut event in batch.events {
                    sockets.observe(&mut event);
                    // Sockets never used in process context while watched (e.g.
                    // accepted but idle): ask /proc, once per socket.
                    if event.owner.is_none() && !matches!(event.kind, EventKind::StateChange { .. } | EventKind::Destroyed { .. }) {
                        event.owner = owners.resolve(event.cookie, &event.connection);
                    }
                    if netns.is_some_and(|inode| inode != event.connection.netns) {
                        continue;
                    }
                    let unseen = gaps.observe(&event);
                    losses.report_unseen_retransmits(unseen, &event, format, &mut out);
                    let line = match format {
                        Format::Json => json_record(&event, &clock).to_string(),
                        Format::Text => text_line(&event, &clock),
                    };
                    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                        // stdout closed (e.g. piped into head): nothing left to do.
                        break 'events;
                    }
                }
            }
            _ = loss_tick.tick() => losses.report(&counters, &programs, format, &mut out),
            signal = &mut stop => {
                info!(signal = signal.as_str(), "stopping");
                break;
            }
        }
    }
    reader.abort();
    losses.report(&counters, &programs, format, &mut out);
    drop(capture);
    info!("kernel programs detached");
    Ok(())
}

/// Reports records the kernel could not deliver, as they happen: in the
/// stream itself (so a consumer knows it has a gap) and in the log. Besides
/// a full ring buffer, the kernel skips a program run (and so its record)
/// when the same program is already running on that CPU: its recursion
/// misses.
#[derive(Default)]
struct LossReporter {
    last: CounterSnapshot,
    last_misses: std::collections::HashMap<&'static str, u64>,
    unseen_retransmits: u64,
}

impl LossReporter {
    /// Retransmits the kernel counted on `event`'s socket that no record
    /// showed (`RetransmitGaps`): reported at once, with the socket.
    fn report_unseen_retransmits(
        &mut self,
        unseen: u8,
        event: &SocketEvent,
        format: Format,
        out: &mut impl Write,
    ) {
        if unseen == 0 {
            return;
        }
        self.unseen_retransmits += u64::from(unseen);
        report_loss(
            "retransmit_not_seen",
            None,
            Some(event),
            u64::from(unseen),
            self.unseen_retransmits,
            format,
            out,
        );
    }

    fn report(
        &mut self,
        counters: &KernelCounters,
        programs: &ProgramStatsReader,
        format: Format,
        out: &mut impl Write,
    ) {
        match counters.snapshot() {
            Ok(now) => {
                for (index, reason) in [
                    (LOST_RINGBUF_FULL, "ring_buffer_full"),
                    (LOST_SOCKET_MAP_FULL, "socket_map_full"),
                ] {
                    let lost = now.get(index).saturating_sub(self.last.get(index));
                    report_loss(reason, None, None, lost, now.get(index), format, out);
                }
                self.last = now;
            }
            Err(error) => warn!(%error, "cannot read kernel counters"),
        }
        for (program, stats) in programs.read() {
            let last = self.last_misses.insert(program, stats.recursion_misses);
            let lost = stats.recursion_misses.saturating_sub(last.unwrap_or(0));
            report_loss(
                "program_busy",
                Some(program),
                None,
                lost,
                stats.recursion_misses,
                format,
                out,
            );
        }
    }
}

fn report_loss(
    reason: &str,
    program: Option<&str>,
    socket: Option<&SocketEvent>,
    lost: u64,
    total: u64,
    format: Format,
    out: &mut impl Write,
) {
    if lost == 0 {
        return;
    }
    let cookie = socket.map(|event| event.cookie);
    warn!(reason, program, cookie, lost, total, "kernel records lost");
    if format == Format::Json {
        // docs/schemas/trace-lost.schema.json
        let mut record = serde_json::json!({
            "event": "lost",
            "schema_version": crate::output::SCHEMA_VERSION,
            "reason": reason,
            "count": lost,
            "total": total,
        });
        if let Some(program) = program {
            record["program"] = program.into();
        }
        if let Some(event) = socket {
            record["cookie"] = event.cookie.into();
            record["netns"] = event.connection.netns.into();
            record["local"] = event.connection.local.to_string().into();
            record["remote"] = event.connection.remote.to_string().into();
        }
        let _ = writeln!(out, "{record}");
    }
}
