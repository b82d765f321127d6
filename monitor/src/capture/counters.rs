//! The kernel programs' per-CPU counters, summed.

use aya::maps::{MapData, PerCpuArray};
use monitor_common::counters::{COUNTER_SLOTS, counter_name};

use super::CaptureError;

/// A snapshot of every counter slot, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub values: Vec<u64>,
}

impl CounterSnapshot {
    pub fn get(&self, index: u32) -> u64 {
        self.values.get(index as usize).copied().unwrap_or(0)
    }

    /// `(name, value)` for every slot.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        (0..COUNTER_SLOTS).map(|index| (counter_name(index), self.get(index)))
    }
}

/// Reads the `COUNTERS` map.
pub struct KernelCounters {
    array: PerCpuArray<MapData, u64>,
}

impl KernelCounters {
    pub(super) fn new(array: PerCpuArray<MapData, u64>) -> Self {
        Self { array }
    }

    pub fn snapshot(&self) -> Result<CounterSnapshot, CaptureError> {
        let mut values = Vec::with_capacity(COUNTER_SLOTS as usize);
        for index in 0..COUNTER_SLOTS {
            let per_cpu = self
                .array
                .get(&index, 0)
                .map_err(super::map_error(monitor_common::maps::COUNTERS))?;
            values.push(
                per_cpu
                    .iter()
                    .fold(0u64, |sum, value| sum.wrapping_add(*value)),
            );
        }
        Ok(CounterSnapshot { values })
    }
}
