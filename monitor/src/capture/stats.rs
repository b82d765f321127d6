//! Per-program kernel statistics: run time, run count, recursion misses
//! (events the kernel dropped because a program was already running on that
//! CPU) and verifier effort, from `/proc/self/fdinfo/<prog fd>`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use aya::programs::ProgramFd;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    pub run_time_ns: u64,
    pub run_count: u64,
    pub recursion_misses: u64,
    pub verified_instructions: u64,
}

/// Parses the `key:\tvalue` lines of a BPF program's fdinfo.
pub fn parse_fdinfo(text: &str) -> ProgramStats {
    let mut stats = ProgramStats::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<u64>() else {
            continue;
        };
        match key.trim() {
            "run_time_ns" => stats.run_time_ns = value,
            "run_cnt" => stats.run_count = value,
            "recursion_misses" => stats.recursion_misses = value,
            "verified_insns" => stats.verified_instructions = value,
            _ => {}
        }
    }
    stats
}

/// Reads the statistics of connmon's programs. Holds the kernel's
/// run-time accounting on (`BPF_ENABLE_STATS`) for as long as it lives.
pub struct ProgramStatsReader {
    programs: Vec<(&'static str, ProgramFd)>,
    _stats_enabled: Option<OwnedFd>,
}

impl ProgramStatsReader {
    pub(super) fn new(
        programs: Vec<(&'static str, ProgramFd)>,
        stats_enabled: Option<OwnedFd>,
    ) -> Self {
        Self {
            programs,
            _stats_enabled: stats_enabled,
        }
    }

    /// `(program, stats)` for every attached program.
    pub fn read(&self) -> Vec<(&'static str, ProgramStats)> {
        self.programs
            .iter()
            .filter_map(|(name, fd)| {
                let text = std::fs::read_to_string(format!(
                    "/proc/self/fdinfo/{}",
                    fd.as_fd().as_raw_fd()
                ))
                .ok()?;
                Some((*name, parse_fdinfo(&text)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_program_fdinfo() {
        let text = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nprog_jited:\t1\nrun_time_ns:\t123456\nrun_cnt:\t789\nrecursion_misses:\t3\nverified_insns:\t4436\n";
        assert_eq!(
            parse_fdinfo(text),
            ProgramStats {
                run_time_ns: 123456,
                run_count: 789,
                recursion_misses: 3,
                verified_instructions: 4436
            }
        );
        assert_eq!(parse_fdinfo("garbage"), ProgramStats::default());
    }
}
