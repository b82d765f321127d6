//! `connmon top` in a real terminal (tmux, read with `capture-pane`):
//! without a daemon it says so and keeps asking; during the seed storm it
//! shows the storm in progress with the client's process and destination,
//! then the ended storm with its outcome.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use connmon_tests::{
    artifacts::run,
    connmon::binary,
    poll,
    scenario::SeedScenario,
    topology::{CACHE_V4, Options, REDIS_PORT},
};

/// A detached tmux session running one command; killed when dropped.
struct Tmux {
    session: String,
}

impl Tmux {
    fn start(tag: &str, command: &str) -> Result<Self> {
        let session = format!("cmt-{tag}-{}", std::process::id());
        let (ok, text) = run(Command::new("tmux")
            .args(["new-session", "-d", "-s", &session, "-x", "200", "-y", "60"])
            .arg(command))
        .context("running tmux (Debian tmux; cargo xtask setup installs it)")?;
        ensure!(ok, "tmux new-session: {text}");
        Ok(Self { session })
    }

    /// What the terminal shows now.
    fn screen(&self) -> Result<String> {
        let (ok, text) =
            run(Command::new("tmux").args(["capture-pane", "-p", "-t", &self.session]))?;
        ensure!(ok, "tmux capture-pane: {text}");
        Ok(text)
    }

    /// Waits until the screen shows something `found` accepts.
    fn wait_for(&self, what: &str, found: impl Fn(&str) -> bool) -> Result<String> {
        let mut last = String::new();
        poll::until(what, Duration::from_secs(30), || {
            last = self.screen()?;
            Ok(found(&last).then(|| last.clone()))
        })
        .with_context(|| format!("the screen:\n{last}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .output();
    }
}

fn top_command(url: &str) -> String {
    format!(
        "{} top --daemon-url {url} --interval 500ms",
        binary().display()
    )
}

/// The lines of the screen's section whose heading starts with `heading`,
/// up to the next blank line.
fn section<'a>(screen: &'a str, heading: &str) -> Vec<&'a str> {
    screen
        .lines()
        .skip_while(|line| !line.starts_with(heading))
        .take_while(|line| !line.trim().is_empty())
        .collect()
}

#[test]
fn top_shows_the_seed_storm_live_and_says_when_no_daemon_answers() -> Result<()> {
    // Nobody listens on a port just released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let nobody = Tmux::start("top-none", &top_command(&format!("http://{closed}")))?;
    nobody.wait_for("the no-daemon notice", |screen| {
        screen.contains(&format!("no connmon daemon answers at http://{closed}"))
    })?;
    drop(nobody);

    let mut scenario = SeedScenario::start("top", &Options::default(), &[])?;
    let top = Tmux::start(
        "top",
        &top_command(&format!("http://{}", scenario.connmon.listen)),
    )?;
    top.wait_for("top's first screen", |screen| {
        screen.contains("STORMS IN PROGRESS (0)")
    })?;
    scenario.resume_after_forgotten("set")?;
    let started = scenario.finding("storm_started", Duration::from_secs(30))?;
    let destination = format!("{CACHE_V4}:{REDIS_PORT}");
    let pid = scenario.client.pid().to_string();
    // While the request hangs: process, pid, destination, the idle gap and
    // the time left until the kernel gives up.
    let screen = top.wait_for("the storm in progress", |screen| {
        section(screen, "STORMS IN PROGRESS").iter().any(|line| {
            line.starts_with("cmt-redis-clien")
                && line.split_whitespace().nth(1) == Some(pid.as_str())
                && line.contains(&destination)
        })
    })?;
    let row = section(&screen, "STORMS IN PROGRESS")
        .into_iter()
        .find(|line| line.starts_with("cmt-redis-clien"))
        .unwrap_or_default()
        .to_string();
    let idle = format!("{:.0}s", started["idle_seconds"].as_f64().unwrap_or(-1.0));
    assert!(row.contains(&idle), "idle gap {idle}: {row}");
    assert!(row.trim_end().ends_with('s'), "time to give up: {row}");
    // tcp_retries2 is 4 in the scenario: the storm ends in seconds.
    top.wait_for("the ended storm", |screen| {
        section(screen, "RECENT").iter().any(|line| {
            line.contains("storm_ended")
                && line.contains("cmt-redis-clien")
                && line.split_whitespace().any(|word| word == pid)
                && line.contains("timed_out")
        })
    })?;
    Ok(())
}
