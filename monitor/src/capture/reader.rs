//! Drains the event ring buffer on tokio and hands decoded events on.
//!
//! The kernel wakes the reader only for events that may confirm a storm;
//! everything else is written without a wakeup (each costs an interrupt) and
//! collected by a periodic drain, which bounds the delay.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
    task::JoinHandle,
};
use tracing::warn;

use crate::{decode::decode, event::SocketEvent};

/// How often the reader drains records written without a wakeup.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// Counts kept by the reader.
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub records: AtomicU64,
    pub decode_errors: AtomicU64,
}

/// Spawns the reader. It stops when the receiving side is dropped.
pub fn spawn(
    ring: RingBuf<MapData>,
    events: mpsc::Sender<SocketEvent>,
    stats: Arc<ReaderStats>,
) -> std::io::Result<JoinHandle<()>> {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same
    // until the RingBuf (moved into the AsyncFd) is dropped with it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|error| error.into_parts().1)?;
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(DRAIN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = tokio::select! {
                guard = ring.readable_mut() => match guard {
                    Ok(mut guard) => {
                        let batch = drain(guard.get_inner_mut(), &stats);
                        guard.clear_ready();
                        batch
                    }
                    Err(error) => {
                        warn!(%error, "event ring buffer poll failed; reader stops");
                        return;
                    }
                },
                _ = tick.tick() => drain(ring.get_mut(), &stats),
                _ = events.closed() => return,
            };
            for event in batch {
                // Back-pressure: while the consumer is behind, the kernel's
                // ring buffer fills and the kernel counts what it drops.
                if events.send(event).await.is_err() {
                    return;
                }
            }
        }
    }))
}

fn drain(ring: &mut RingBuf<MapData>, stats: &ReaderStats) -> Vec<SocketEvent> {
    let mut batch = Vec::new();
    while let Some(record) = ring.next() {
        stats.records.fetch_add(1, Ordering::Relaxed);
        match decode(&record) {
            Ok(event) => batch.push(event),
            Err(error) => {
                let errors = stats.decode_errors.fetch_add(1, Ordering::Relaxed) + 1;
                if errors.is_power_of_two() {
                    warn!(%error, errors, "undecodable kernel record dropped");
                }
            }
        }
    }
    batch
}
