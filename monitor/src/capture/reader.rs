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
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinHandle,
};
use tracing::warn;

use crate::{decode::decode, event::SocketEvent};

/// How often the reader drains records written without a wakeup.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// Most events handed on at once: a batch costs one channel send and one
/// consumer wakeup instead of one per record.
pub const MAX_BATCH: usize = 1024;

/// Decoded events held between the reader and its consumer, at most
/// (about 300 bytes each: some 20 MB, only while a burst is being
/// processed). The reader empties the kernel's ring as fast as it can
/// decode, so a burst of records (thousands of storms confirmed in the
/// same jiffy) waits here, not in the ring, while findings are written.
pub const MAX_EVENTS_IN_FLIGHT: usize = 65_536;

/// Decoded events and their share of `MAX_EVENTS_IN_FLIGHT`, returned
/// when the batch is dropped (after the consumer handled it).
pub struct Batch {
    pub events: Vec<SocketEvent>,
    _in_flight: OwnedSemaphorePermit,
}

/// What `spawn` sends on.
pub struct BatchSender {
    batches: mpsc::UnboundedSender<Batch>,
    in_flight: Arc<Semaphore>,
}

impl BatchSender {
    /// Waits until the batch fits under `MAX_EVENTS_IN_FLIGHT`, then hands
    /// it on; false once the consumer is gone.
    async fn send(&self, events: Vec<SocketEvent>) -> bool {
        let Ok(permit) = self
            .in_flight
            .clone()
            .acquire_many_owned(events.len() as u32)
            .await
        else {
            return false;
        };
        self.batches
            .send(Batch {
                events,
                _in_flight: permit,
            })
            .is_ok()
    }
}

/// Creates the channel `spawn` sends on.
pub fn channel() -> (BatchSender, mpsc::UnboundedReceiver<Batch>) {
    let (batches, receiver) = mpsc::unbounded_channel();
    let in_flight = Arc::new(Semaphore::new(MAX_EVENTS_IN_FLIGHT));
    (BatchSender { batches, in_flight }, receiver)
}

/// Counts kept by the reader.
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub records: AtomicU64,
    pub decode_errors: AtomicU64,
}

/// Spawns the reader. It stops when the receiving side is dropped.
pub fn spawn(
    ring: RingBuf<MapData>,
    events: BatchSender,
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
            let open = tokio::select! {
                guard = ring.readable_mut() => match guard {
                    Ok(mut guard) => {
                        let open = drain_all(guard.get_inner_mut(), &events, &stats).await;
                        guard.clear_ready();
                        open
                    }
                    Err(error) => {
                        warn!(%error, "event ring buffer poll failed; reader stops");
                        false
                    }
                },
                _ = tick.tick() => drain_all(ring.get_mut(), &events, &stats).await,
                _ = events.batches.closed() => false,
            };
            if !open {
                return;
            }
        }
    }))
}

/// Hands every record in the ring on, in batches; false once the consumer
/// is gone. Back-pressure: once `MAX_EVENTS_IN_FLIGHT` wait for the
/// consumer, the kernel's ring buffer fills and the kernel counts what it
/// drops.
async fn drain_all(ring: &mut RingBuf<MapData>, events: &BatchSender, stats: &ReaderStats) -> bool {
    loop {
        let batch = drain(ring, stats);
        // A batch short of the limit emptied the ring.
        let emptied = batch.len() < MAX_BATCH;
        if !batch.is_empty() && !events.send(batch).await {
            return false;
        }
        if emptied {
            return true;
        }
    }
}

/// Decodes up to `MAX_BATCH` records.
fn drain(ring: &mut RingBuf<MapData>, stats: &ReaderStats) -> Vec<SocketEvent> {
    let mut batch = Vec::new();
    while batch.len() < MAX_BATCH
        && let Some(record) = ring.next()
    {
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
