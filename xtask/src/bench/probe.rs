//! Readings from /proc: BPF program statistics of the programs a process
//! holds, its CPU time and memory, and the machine's IRQ-work interrupts.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

/// The kernel's statistics for one program (`kernel.bpf_stats_enabled`).
#[derive(Clone, Debug, Default)]
pub struct ProgramStats {
    pub name: String,
    pub run_time_ns: u64,
    pub run_count: u64,
    pub recursion_misses: u64,
}

/// One program's runs within a measurement window.
#[derive(Clone, Debug, Default)]
pub struct ProgramWindow {
    pub name: String,
    pub runs: u64,
    pub run_time_ns: u64,
    pub recursion_misses: u64,
}

impl ProgramWindow {
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_time_ns as f64 / self.runs as f64)
    }
}

/// Program ids and names from bpftool (fdinfo has no name).
fn program_names() -> BTreeMap<u64, String> {
    let Ok(out) = std::process::Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
    else {
        return BTreeMap::new();
    };
    let Ok(list) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return BTreeMap::new();
    };
    list.as_array()
        .map(|programs| {
            programs
                .iter()
                .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Every BPF program `pid` holds a file descriptor of, by program id.
pub fn programs_of(pid: u32) -> Result<BTreeMap<u64, ProgramStats>> {
    let names = program_names();
    let mut programs = BTreeMap::new();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?;
    for fd in fds.filter_map(|entry| entry.ok()) {
        let is_program = std::fs::read_link(fd.path())
            .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_program {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        )) else {
            continue;
        };
        let field = |key: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|value| value.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let id = field("prog_id");
        programs.insert(
            id,
            ProgramStats {
                name: names
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| format!("id {id}")),
                run_time_ns: field("run_time_ns"),
                run_count: field("run_cnt"),
                recursion_misses: field("recursion_misses"),
            },
        );
    }
    Ok(programs)
}

/// Runs of each program between two readings (programs that ran only).
pub fn program_windows(
    before: &BTreeMap<u64, ProgramStats>,
    after: &BTreeMap<u64, ProgramStats>,
) -> Vec<ProgramWindow> {
    after
        .iter()
        .map(|(id, now)| {
            let then = before.get(id).cloned().unwrap_or_default();
            ProgramWindow {
                name: now.name.clone(),
                runs: now.run_count.saturating_sub(then.run_count),
                run_time_ns: now.run_time_ns.saturating_sub(then.run_time_ns),
                recursion_misses: now.recursion_misses.saturating_sub(then.recursion_misses),
            }
        })
        .filter(|window| window.runs > 0)
        .collect()
}

/// User and system CPU seconds of process `pid` (all its threads).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub user_s: f64,
    pub system_s: f64,
}

pub fn cpu(pid: u32) -> Result<Cpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces and ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let tick = |index: usize| -> Result<f64> {
        Ok(fields
            .get(index)
            .and_then(|value| value.parse::<f64>().ok())
            .context("stat field")?
            / ticks)
    };
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    Ok(Cpu {
        user_s: tick(11)?,
        system_s: tick(12)?,
    })
}

/// CPU time of all threads of `pid` in nanoseconds (`/proc/PID/task/*/
/// schedstat`, first field): finer than the 10 ms ticks of `stat`.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| task.ok())
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Busy CPU time of the whole machine so far (all CPUs: user, nice,
/// system, irq, softirq and steal time from the first line of /proc/stat),
/// in ns.
pub fn machine_busy_ns() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|value| value.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&index| fields.get(index))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    Ok(busy * (1_000_000_000 / ticks))
}

/// Resident memory of `pid`, KiB.
pub fn resident_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// Voluntary context switches over all threads of `pid`: how often it
/// slept and was woken (the ring-buffer reader's wakeups among them).
pub fn voluntary_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| task.ok())
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|value| value.trim().parse::<u64>().ok())
        })
        .sum()
}

/// IRQ-work interrupts on all CPUs (`IWI` in /proc/interrupts): every
/// ring-buffer or perf-buffer wakeup from a BPF program raises one.
pub fn irq_work_interrupts() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/interrupts") else {
        return 0;
    };
    text.lines()
        .find_map(|line| line.trim_start().strip_prefix("IWI:"))
        .map(|rest| {
            rest.split_whitespace()
                .map_while(|value| value.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// Sum of every sample of a metric family in Prometheus text (optionally
/// only samples whose labels contain `filter`).
pub fn metric_sum(metrics: &str, family: &str, filter: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| line.contains(filter))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_metric_families_exactly() {
        let text = "# HELP x\nconnmon_events_total{event=\"a\"} 2\nconnmon_events_total{event=\"b\"} 3\nconnmon_events_total_other 9\nconnmon_up 1\n";
        assert_eq!(metric_sum(text, "connmon_events_total", ""), 5.0);
        assert_eq!(metric_sum(text, "connmon_events_total", "\"b\""), 3.0);
        assert_eq!(metric_sum(text, "connmon_up", ""), 1.0);
    }

    #[test]
    fn windows_keep_programs_that_ran() {
        let mut before = BTreeMap::new();
        before.insert(
            1,
            ProgramStats {
                name: "a".into(),
                run_time_ns: 100,
                run_count: 1,
                recursion_misses: 0,
            },
        );
        let mut after = before.clone();
        if let Some(a) = after.get_mut(&1) {
            a.run_time_ns = 1100;
            a.run_count = 11;
        }
        after.insert(2, ProgramStats::default());
        let windows = program_windows(&before, &after);
        assert_eq!(windows.len(), 1);
        assert_eq!(windows[0].ns_per_run(), Some(100.0));
    }
}
