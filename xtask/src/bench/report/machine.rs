//! The machine and the software a run was measured with (the report's
//! header), read from the system at render time.

use std::{fmt::Write as _, process::Command, time::Duration};

/// What a run was measured on and with.
pub(super) struct Machine {
    /// `date -u`, to the minute.
    pub date: String,
    pub kernel: String,
    pub cpus: String,
    pub cpu_model: String,
    /// connmon's commit, short.
    pub commit: String,
    pub bcc: String,
    pub bpftrace: String,
}

impl Machine {
    pub fn probe() -> Self {
        Self {
            date: command_line("date", &["-u", "+%Y-%m-%d %H:%M"]),
            kernel: command_line("uname", &["-r"]),
            cpus: command_line("nproc", &[]),
            cpu_model: cpu_model(),
            commit: command_line("git", &["rev-parse", "--short", "HEAD"]),
            bcc: command_line("dpkg-query", &["-W", "-f=${Version}", "bpfcc-tools"]),
            bpftrace: command_line("dpkg-query", &["-W", "-f=${Version}", "bpftrace"]),
        }
    }

    /// The header table's rows about the run, the machine and the software.
    pub fn rows(&self, md: &mut String, elapsed: Duration) {
        let _ = writeln!(
            md,
            "| run | {} UTC, {:.0} s |",
            self.date,
            elapsed.as_secs_f64()
        );
        let _ = writeln!(
            md,
            "| machine | Linux {}, {} CPUs ({}) |",
            self.kernel, self.cpus, self.cpu_model
        );
        let _ = writeln!(md, "| connmon | commit {} |", self.commit);
        let _ = writeln!(
            md,
            "| peers | bcc {} (`tcpretrans-bpfcc`), bpftrace {} |",
            self.bcc, self.bpftrace
        );
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into())
}
