//! Project tasks: `cargo xtask <setup|build|run|test>`.
//!
//! `setup` installs whatever a fresh machine lacks (idempotent); every other
//! task calls it first, so the README's two commands work on a clean clone.

mod bench;
mod setup;
mod tasks;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces and Debian packages connmon needs.
    Setup,
    /// Build the connmon binary (kernel programs included).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run connmon (release build) with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Coverage-guided fuzzing (cargo fuzz, libFuzzer) of the event decoder
    /// and the settings parser, for a bounded time each.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Measure connmon's overhead and speed next to bcc and bpftrace on
    /// this machine; writes bench/report.md and bench/report.svg.
    Bench(bench::Options),
    /// Run the whole test suite: unit tests and the root-only kernel tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let project = setup::Project::locate()?;
    match Cli::parse().task {
        Task::Setup => setup::run(&project),
        Task::Build { release } => {
            setup::run(&project)?;
            tasks::build(&project, release).map(|_| ())
        }
        Task::Run { args } => {
            setup::run(&project)?;
            tasks::run(&project, &args)
        }
        Task::Fuzz { seconds } => {
            setup::run(&project)?;
            tasks::fuzz(&project, seconds)
        }
        Task::Bench(options) => {
            setup::run(&project)?;
            bench::run(&project, &options)
        }
        Task::Test { args } => {
            setup::run(&project)?;
            tasks::test(&project, &args)
        }
    }
}
