//! The figures the report shows, derived from the raw samples: per tool,
//! per setup and per hook, one value per round.

use super::{Results, stats::median};
use crate::bench::{
    floor,
    peers::Tool,
    workloads::{
        redis::{self, Setup},
        retransmit,
    },
};

fn floor_setup(watched: bool) -> Setup {
    if watched {
        Setup::WatchedWithFloor
    } else {
        Setup::UnwatchedWithFloor
    }
}

impl Results {
    pub(super) fn samples(&self, tool: Tool) -> impl Iterator<Item = &retransmit::Sample> {
        self.retransmit
            .samples
            .iter()
            .filter(move |s| s.tool == tool)
    }

    /// ns per run of the tool's retransmit program, one value per round.
    pub fn retransmit_ns(&self, tool: Tool) -> Vec<f64> {
        self.samples(tool)
            .filter_map(|s| s.retransmit_program()?.ns_per_run())
            .collect()
    }

    pub(super) fn retransmit_runs(&self, tool: Tool) -> Vec<f64> {
        self.samples(tool)
            .filter_map(|s| Some(s.retransmit_program()?.runs as f64))
            .collect()
    }

    pub(super) fn throughput(&self, tool: Tool) -> Vec<f64> {
        self.samples(tool).map(|s| s.throughput_bps).collect()
    }

    /// Median throughput with `tool` over the median with none.
    pub fn throughput_ratio(&self, tool: Tool) -> Option<f64> {
        Some(median(self.throughput(tool))? / median(self.throughput(Tool::None))?)
    }

    /// CPU ms of the tool's process per 1,000 retransmit-program runs: user
    /// time from `stat` (10 ms ticks), or user + system from `schedstat`.
    pub(super) fn cpu_per_1000(&self, tool: Tool, user_only: bool) -> Vec<f64> {
        self.samples(tool)
            .filter_map(|s| {
                let runs = s.retransmit_program()?.runs as f64;
                let seconds = if user_only {
                    s.cpu?.user_s
                } else {
                    s.cpu_ns? as f64 / 1e9
                };
                (runs > 0.0).then(|| seconds * 1e3 / runs * 1e3)
            })
            .collect()
    }

    pub(super) fn irq_work_per_second(&self, tool: Tool) -> Vec<f64> {
        self.samples(tool)
            .map(|s| s.irq_work as f64 / self.seconds.max(1) as f64)
            .collect()
    }

    pub(super) fn irq_work_per_1000(&self, tool: Tool) -> Vec<f64> {
        self.samples(tool)
            .filter_map(|s| {
                let events = s.retransmit_program()?.runs as f64;
                (events > 0.0).then(|| s.irq_work as f64 / events * 1e3)
            })
            .collect()
    }

    pub(super) fn program_ns(&self, tool: Tool, name: &str) -> Vec<f64> {
        self.samples(tool)
            .filter_map(|s| {
                s.programs
                    .iter()
                    .find(|p| p.name.starts_with(name))?
                    .ns_per_run()
            })
            .collect()
    }

    pub(super) fn redis_samples(
        &self,
        keepalive: bool,
        setup: Setup,
    ) -> impl Iterator<Item = &redis::Sample> {
        self.redis
            .samples
            .iter()
            .filter(move |s| s.keepalive == keepalive && s.setup == setup)
    }

    pub(super) fn redis_rps(&self, keepalive: bool, setup: Setup) -> Vec<f64> {
        self.redis_samples(keepalive, setup)
            .map(|s| s.requests_per_second)
            .collect()
    }

    /// Median throughput with connmon over the median without.
    pub fn redis_throughput_ratio(&self, keepalive: bool) -> Option<f64> {
        Some(
            median(self.redis_rps(keepalive, Setup::Connmon))?
                / median(self.redis_rps(keepalive, Setup::Without))?,
        )
    }

    pub(super) fn redis_cpu_per_request(&self, keepalive: bool, setup: Setup) -> Vec<f64> {
        self.redis_samples(keepalive, setup)
            .map(redis::Sample::cpu_us_per_request)
            .collect()
    }

    /// Per round: machine CPU per request with connmon over without, minus
    /// one (paired within the round, so slow drift cancels).
    pub fn redis_cpu_delta(&self, keepalive: bool) -> Vec<f64> {
        self.redis_samples(keepalive, Setup::Connmon)
            .filter_map(|with| {
                let without = self
                    .redis_samples(keepalive, Setup::Without)
                    .find(|s| s.round == with.round)?;
                let base = without.cpu_us_per_request();
                (base > 0.0).then(|| with.cpu_us_per_request() / base - 1.0)
            })
            .collect()
    }

    /// connmon's ns per run on `hook` over the empty program's, per round.
    pub fn hook_ratio(&self, keepalive: bool, watched: bool, hook: &str) -> Vec<f64> {
        self.redis_samples(keepalive, floor_setup(watched))
            .filter_map(|s| s.ratio_to_floor(hook))
            .collect()
    }

    /// ns per run of connmon's program (or the floor's) on `hook`.
    pub(super) fn hook_ns(
        &self,
        keepalive: bool,
        watched: bool,
        hook: &str,
        of_floor: bool,
    ) -> Vec<f64> {
        self.redis_samples(keepalive, floor_setup(watched))
            .filter_map(|s| {
                let programs = if of_floor { &s.floor } else { &s.programs };
                programs
                    .iter()
                    .find(|p| p.name == hook || hook.starts_with(&p.name))?
                    .ns_per_run()
            })
            .collect()
    }

    pub(super) fn hook_runs_per_request(&self, keepalive: bool, hook: &str) -> Vec<f64> {
        self.redis_samples(keepalive, floor_setup(true))
            .filter_map(|s| {
                let runs = s.floor.iter().find(|p| p.name == hook)?.runs;
                Some(runs as f64 / f64::from(s.requests.max(1)))
            })
            .collect()
    }

    /// ns per run of a one-helper-call probe over the empty program on the
    /// same hook, per keep-alive round.
    pub(super) fn helper_cost(&self, helper: &str) -> Vec<f64> {
        self.redis_samples(true, Setup::WatchedWithFloor)
            .filter_map(|s| {
                let probe = s.floor.iter().find(|p| p.name == helper)?.ns_per_run()?;
                let empty = s
                    .floor
                    .iter()
                    .find(|p| p.name == floor::PROBE_HOOK)?
                    .ns_per_run()?;
                Some(probe - empty)
            })
            .collect()
    }

    /// Share of the machine's CPU time spent in connmon's programs during
    /// the redis windows with connmon (and the floor, which does not count
    /// here) attached.
    pub(super) fn redis_kernel_share(&self, keepalive: bool) -> Vec<f64> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        self.redis_samples(keepalive, Setup::WatchedWithFloor)
            .filter(|s| s.requests_per_second > 0.0)
            .map(|s| {
                let kernel_ns: u64 = s.programs.iter().map(|p| p.run_time_ns).sum();
                let window_ns = f64::from(s.requests) / s.requests_per_second * 1e9;
                kernel_ns as f64 / (cpus * window_ns) * 100.0
            })
            .collect()
    }

    /// connmon's `tcp_retransmit_skb` ns per run over the empty program's,
    /// in the same retransmit-workload window.
    pub fn retransmit_ratio(&self, tool: Tool) -> Vec<f64> {
        self.samples(tool)
            .filter_map(|s| {
                let connmon = s.retransmit_program()?.ns_per_run()?;
                let floor = s.floor.as_ref()?.ns_per_run()?;
                (floor > 0.0).then(|| connmon / floor)
            })
            .collect()
    }

    pub(super) fn retransmit_floor_ns(&self, tool: Tool) -> Vec<f64> {
        self.samples(tool)
            .filter_map(|s| s.floor.as_ref()?.ns_per_run())
            .collect()
    }

    pub(super) fn pipeline_rate(&self, name: &str) -> Option<f64> {
        self.pipeline
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.events_per_second)
    }

    pub(super) fn connmon_windows(&self, tool: Tool) -> Vec<&retransmit::ConnmonWindow> {
        self.samples(tool)
            .filter_map(|s| s.connmon.as_ref())
            .collect()
    }

    /// connmon's user CPU per 1,000 records it processed (events config).
    pub(super) fn connmon_cpu_per_1000_records(&self) -> Vec<f64> {
        self.samples(Tool::ConnmonEvents)
            .filter_map(|s| {
                let records = s.connmon.as_ref()?.processed;
                (records > 0.0).then(|| s.cpu.map(|c| c.user_s * 1e6 / records))?
            })
            .collect()
    }
}
