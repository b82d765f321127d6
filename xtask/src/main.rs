//! Project tasks: `cargo xtask <setup|build|run|test>`.
//!
//! `setup` installs whatever a fresh machine lacks (idempotent); every other
//! task calls it first, so the README's two commands work on a clean clone.

mod image;
mod manifests;
mod pyvenv;
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
    /// Write deploy/kubernetes/prometheusrule.yaml from the shipped rules
    /// file (`--check`: fail if it is out of date instead).
    Manifests {
        #[arg(long)]
        check: bool,
    },
    /// Build the container image from the Containerfile (podman or buildah).
    Image {
        /// Image name and tag.
        #[arg(long, default_value = "connmon:0.1.0")]
        tag: String,
        /// Build arguments, e.g. `RUST_IMAGE=mirror/rust:1.95-bookworm`.
        #[arg(long = "build-arg")]
        build_args: Vec<String>,
    },
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
        Task::Manifests { check } => manifests::run(&project, check),
        Task::Image { tag, build_args } => image::run(&project, &tag, &build_args),
        Task::Test { args } => {
            setup::run(&project)?;
            tasks::test(&project, &args)
        }
    }
}
