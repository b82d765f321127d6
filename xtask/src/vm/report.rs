//! What connmon chose and what the verifier needed on one kernel, read out
//! of the guest's serial log (connmon's own start-up log lines), and the
//! docs/kernels.md table made from those reports.

use std::{fs, path::Path};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// One kernel's start-up, as connmon logged it.
#[derive(Debug, Default, PartialEq)]
pub struct KernelReport {
    pub release: String,
    /// `pass`, or why the guest failed.
    pub verdict: String,
    /// `kind/target` per hook, e.g. `fexit/tcp_sendmsg`.
    pub hooks: Vec<String>,
    pub programs: Vec<Program>,
    /// `(hook, capability lost)` for each named degradation.
    pub degraded: Vec<(String, String)>,
}

#[derive(Debug, PartialEq)]
pub struct Program {
    pub name: String,
    pub verified_insns: u64,
    pub load_ms: u64,
}

impl KernelReport {
    pub fn from_serial_log(release: &str, verdict: &str, log: &Path) -> Result<Self> {
        let text = fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
        let mut report = Self::parse(release, &text);
        report.verdict = verdict.to_string();
        if report.hooks.is_empty() {
            bail!("connmon's hook choice is not in the log");
        }
        Ok(report)
    }

    fn parse(release: &str, text: &str) -> Self {
        let mut report = Self {
            release: release.to_string(),
            ..Self::default()
        };
        for line in text.lines() {
            if line.contains("hooks chosen for this kernel") {
                if let Some(list) = field(line, "hooks") {
                    report.hooks = list
                        .trim_matches(|c| c == '[' || c == ']')
                        .split(", ")
                        .map(|hook| hook.trim_matches('"').to_string())
                        .filter(|hook| !hook.is_empty())
                        .collect();
                }
            } else if line.contains("kernel program attached ") {
                let number = |name| field(line, name).and_then(|value| value.parse().ok());
                if let (Some(name), Some(verified_insns), Some(load_ms)) = (
                    field(line, "program"),
                    number("verified_insns"),
                    number("load_ms"),
                ) {
                    let name = name.trim_matches('"').to_string();
                    if !report.programs.iter().any(|p| p.name == name) {
                        report.programs.push(Program {
                            name,
                            verified_insns,
                            load_ms,
                        });
                    }
                }
            } else if line.contains("capability degraded") {
                let hook = field(line, "tracepoint").or_else(|| field(line, "hook"));
                if let (Some(hook), Some(lost)) = (hook, field(line, "lost")) {
                    let entry = (hook.trim_matches('"').into(), lost.trim_matches('"').into());
                    if !report.degraded.contains(&entry) {
                        report.degraded.push(entry);
                    }
                }
            }
        }
        report
    }

    pub fn to_json(&self) -> Value {
        json!({
            "release": self.release,
            "verdict": self.verdict,
            "hooks": self.hooks,
            "programs": self.programs.iter().map(|p| json!({
                "name": p.name, "verified_insns": p.verified_insns, "load_ms": p.load_ms,
            })).collect::<Vec<_>>(),
            "degraded": self.degraded.iter().map(|(hook, lost)| json!({
                "hook": hook, "lost": lost,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn from_json(value: &Value) -> Option<Self> {
        let strings = |key: &str| -> Option<Vec<String>> {
            value[key]
                .as_array()?
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect()
        };
        Some(Self {
            release: value["release"].as_str()?.to_string(),
            verdict: value["verdict"].as_str()?.to_string(),
            hooks: strings("hooks")?,
            programs: value["programs"]
                .as_array()?
                .iter()
                .map(|p| {
                    Some(Program {
                        name: p["name"].as_str()?.to_string(),
                        verified_insns: p["verified_insns"].as_u64()?,
                        load_ms: p["load_ms"].as_u64()?,
                    })
                })
                .collect::<Option<_>>()?,
            degraded: value["degraded"]
                .as_array()?
                .iter()
                .map(|d| Some((d["hook"].as_str()?.into(), d["lost"].as_str()?.into())))
                .collect::<Option<_>>()?,
        })
    }
}

/// `name=value` from a tracing log line: a quoted value may hold spaces, a
/// bracketed list holds `", "`.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[start..];
    let end = match rest.chars().next()? {
        '"' => rest[1..].find('"').map(|at| at + 2)?,
        '[' => rest.find(']').map(|at| at + 1)?,
        _ => rest.find(' ').unwrap_or(rest.len()),
    };
    Some(&rest[..end])
}

/// `(hook, how it is served)` from connmon's hook description:
/// `tp_btf/NAME`, or `fexit/FUNCTION (no tracepoint NAME)`.
fn served_by(description: &str) -> (String, String) {
    if let Some((how, hook)) = description.split_once(" (no tracepoint ") {
        return (hook.trim_end_matches(')').to_string(), how.to_string());
    }
    match description.split_once('/') {
        Some((kind, hook)) => (hook.to_string(), kind.to_string()),
        None => (description.to_string(), "?".to_string()),
    }
}

/// Markers around the generated section of docs/kernels.md.
pub const BEGIN: &str = "<!-- vm-matrix:begin (written by `cargo xtask vm-test --write-docs`) -->";
pub const END: &str = "<!-- vm-matrix:end -->";

/// Markdown tables for `reports`: hooks and degradations per kernel, then
/// verified instructions and load time per program.
pub fn markdown(reports: &[KernelReport]) -> String {
    let mut out = String::new();
    let header: Vec<&str> = reports.iter().map(|r| r.release.as_str()).collect();
    out.push_str(&format!("| | {} |\n", header.join(" | ")));
    out.push_str(&format!("|---|{}\n", "---|".repeat(reports.len())));
    let verdicts: Vec<String> = reports
        .iter()
        .map(|r| {
            if r.verdict == "pass" {
                "pass".to_string()
            } else {
                format!("**fails**: {}", r.verdict)
            }
        })
        .collect();
    out.push_str(&format!("| vm-test | {} |\n", verdicts.join(" | ")));
    let rows = unique(reports.iter().flat_map(|r| {
        r.hooks
            .iter()
            .map(|hook| served_by(hook).0)
            .chain(r.degraded.iter().map(|(hook, _)| hook.clone()))
    }));
    for row in &rows {
        let cells: Vec<String> = reports
            .iter()
            .map(|r| {
                if let Some((_, how)) = r
                    .hooks
                    .iter()
                    .map(|h| served_by(h))
                    .find(|(hook, _)| hook == row)
                {
                    how
                } else if r.degraded.iter().any(|(hook, _)| hook == row) {
                    "missing (degraded)".to_string()
                } else {
                    "—".to_string()
                }
            })
            .collect();
        out.push_str(&format!("| `{row}` | {} |\n", cells.join(" | ")));
    }
    out.push('\n');
    out.push_str("Verified instructions (load time in ms) per program:\n\n");
    out.push_str(&format!("| program | {} |\n", header.join(" | ")));
    out.push_str(&format!("|---|{}\n", "---:|".repeat(reports.len())));
    let programs = unique(
        reports
            .iter()
            .flat_map(|r| r.programs.iter().map(|p| p.name.clone())),
    );
    for name in &programs {
        let cells: Vec<String> = reports
            .iter()
            .map(|r| match r.programs.iter().find(|p| &p.name == name) {
                // Kernels before 5.16 do not report the count.
                Some(p) if p.verified_insns == 0 => format!("not reported ({})", p.load_ms),
                Some(p) => format!("{} ({})", thousands(p.verified_insns), p.load_ms),
                None => "—".to_string(),
            })
            .collect();
        out.push_str(&format!("| `{name}` | {} |\n", cells.join(" | ")));
    }
    let degraded: Vec<String> = reports
        .iter()
        .filter(|r| !r.degraded.is_empty())
        .map(|r| {
            let lost: Vec<String> = r
                .degraded
                .iter()
                .map(|(hook, lost)| format!("`{hook}` ({lost})"))
                .collect();
            format!("- {}: {}\n", r.release, lost.join("; "))
        })
        .collect();
    if !degraded.is_empty() {
        out.push_str("\nNamed degradations (logged and exported as `connmon_degraded_hooks`):\n\n");
        out.extend(degraded);
    }
    out
}

/// Replaces the generated section of `doc` (between the markers).
pub fn replace_section(doc: &str, section: &str) -> Result<String> {
    let (Some(begin), Some(end)) = (doc.find(BEGIN), doc.find(END)) else {
        bail!("docs/kernels.md has no vm-matrix markers");
    };
    Ok(format!(
        "{}{BEGIN}\n{section}{}",
        &doc[..begin],
        &doc[end..]
    ))
}

fn unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-12-03T13:04:48.038157Z  INFO connmon::capture: hooks chosen for this kernel hooks=[\"fexit/tcp_sendmsg (no tracepoint sock_send_length)\", \"tp_btf/tcp_retransmit_skb\"]\r
2026-12-03T13:04:48.038157Z  WARN connmon::capture: tracepoint missing on this kernel; capability degraded tracepoint=\"tcp_cong_state_set\" lost=\"early end of a storm when data is acknowledged\"
2026-12-03T13:04:48.198242Z  INFO connmon::capture: kernel program attached program=\"tcp_sendmsg_exit\" verified_insns=1793 load_ms=340
[   12.000000] random kernel line
";

    #[test]
    fn serial_log_gives_hooks_programs_and_degradations() {
        let report = KernelReport::parse("6.1.0-57-amd64", LOG);
        assert_eq!(
            report.hooks,
            [
                "fexit/tcp_sendmsg (no tracepoint sock_send_length)",
                "tp_btf/tcp_retransmit_skb"
            ]
        );
        assert_eq!(
            report.programs,
            [Program {
                name: "tcp_sendmsg_exit".into(),
                verified_insns: 1793,
                load_ms: 340
            }]
        );
        assert_eq!(
            report.degraded,
            [(
                "tcp_cong_state_set".to_string(),
                "early end of a storm when data is acknowledged".to_string()
            )]
        );
        assert_eq!(KernelReport::from_json(&report.to_json()), Some(report));
    }

    #[test]
    fn table_has_a_column_per_kernel_and_marks_degradations() {
        let mut report = KernelReport::parse("6.1.0-57-amd64", LOG);
        report.verdict = "pass".into();
        let table = markdown(&[report]);
        assert!(table.contains("| vm-test | pass |"), "{table}");
        assert!(
            table.contains("| `sock_send_length` | fexit/tcp_sendmsg |"),
            "{table}"
        );
        assert!(
            table.contains("| `tcp_retransmit_skb` | tp_btf |"),
            "{table}"
        );
        assert!(
            table.contains("| `tcp_cong_state_set` | missing (degraded) |"),
            "{table}"
        );
        assert!(
            table.contains("| `tcp_sendmsg_exit` | 1,793 (340) |"),
            "{table}"
        );
    }

    #[test]
    fn section_between_the_markers_is_replaced() {
        let doc = format!("intro\n{BEGIN}\nold\n{END}\nafter\n");
        assert_eq!(
            replace_section(&doc, "new\n").unwrap(),
            format!("intro\n{BEGIN}\nnew\n{END}\nafter\n")
        );
        assert!(replace_section("no markers", "x").is_err());
    }
}
