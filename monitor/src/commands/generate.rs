//! `connmon generate`: man pages and shell completions, made from the clap
//! definitions so they cannot drift from the flags. The Debian package
//! ships them (`cargo xtask deb`).

use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::{Cli, GenerateArgs, Generated};

pub fn run(args: &GenerateArgs, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let shell = match args.what {
        Generated::Man => {
            let dir = args
                .out_dir
                .as_deref()
                .context("--out-dir is needed for man pages")?;
            return man_pages(dir);
        }
        Generated::Bash => clap_complete::Shell::Bash,
        Generated::Zsh => clap_complete::Shell::Zsh,
        Generated::Fish => clap_complete::Shell::Fish,
    };
    // Into memory first: clap_complete panics on a failed write (a closed
    // pipe), which is an error here.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "connmon", &mut script);
    out.write_all(&script)
        .context("writing the completion script")
}

/// `connmon.1` and one page per subcommand (`connmon-run.1`, ...).
fn man_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated(what: Generated) -> String {
        let mut out = Vec::new();
        run(
            &GenerateArgs {
                what,
                out_dir: None,
            },
            &mut out,
        )
        .expect("generate");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn completions_know_the_subcommands_and_their_flags() {
        for what in [Generated::Bash, Generated::Zsh, Generated::Fish] {
            let script = generated(what);
            for word in ["run", "trace", "audit", "--output-format", "--log-format"] {
                assert!(script.contains(word), "{what:?} lacks {word}");
            }
        }
    }

    #[test]
    fn man_pages_are_written_per_command() {
        let dir = std::env::temp_dir().join(format!("connmon-man-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        run(
            &GenerateArgs {
                what: Generated::Man,
                out_dir: Some(dir.clone()),
            },
            &mut std::io::sink(),
        )
        .expect("man pages");
        for page in [
            "connmon.1",
            "connmon-run.1",
            "connmon-audit.1",
            "connmon-trace.1",
        ] {
            let text = std::fs::read_to_string(dir.join(page)).expect(page);
            assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
        }
        let run_page = std::fs::read_to_string(dir.join("connmon-run.1")).expect("run page");
        assert!(run_page.contains("output\\-format"), "{run_page}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
