//! Running helper commands with errors that say what failed.

use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// Runs `program args...` to completion; fails with its stderr on a
/// non-zero exit.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting {program} {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// Like `run`, returning stdout as text.
pub fn stdout(program: &str, args: &[&str]) -> Result<String> {
    Ok(String::from_utf8_lossy(&run(program, args)?.stdout).into_owned())
}
