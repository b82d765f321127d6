//! Project tasks: `cargo xtask <setup|build|run|fuzz|soak|vm-test|bench|manifests|image|minimal-image|deb|test>`.
//!
//! `setup` installs whatever a fresh machine lacks (idempotent); every other
//! task calls it first, so the README's two commands work on a clean clone.

mod bench;
mod deb;
mod image;
mod manifests;
mod minimal_image;
mod pyvenv;
mod setup;
mod tasks;
mod vm;

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
    /// Soak: connection churn with periodic storms for minutes; fails if
    /// memory grows, tracked sockets leak or a storm goes unreported.
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u32,
        /// Short connections opened and closed per second.
        #[arg(long, default_value_t = 2000)]
        churn_per_second: u32,
        /// Seconds between induced storms on idle connections.
        #[arg(long, default_value_t = 30)]
        storm_every_seconds: u32,
    },
    /// connmon on Debian's kernels (5.10, 6.1, 6.12), each booted under
    /// qemu: start-up, hook choice and an idle-connection storm inside the
    /// guest.
    VmTest {
        /// Only this kernel series (e.g. `6.12`); default: the whole
        /// matrix.
        #[arg(long)]
        kernel: Option<String>,
        /// Rewrite docs/kernels.md's per-kernel tables from the runs'
        /// reports (after the runs).
        #[arg(long)]
        write_docs: bool,
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
    /// Write the minimal runtime image (the binary and the libraries it
    /// links, with its file capabilities; no shell) as an OCI archive,
    /// without a container runtime: target/image/connmon-oci.tar.
    MinimalImage {
        /// Image name and tag.
        #[arg(long, default_value = "connmon:0.1.0")]
        tag: String,
        /// Put this binary in instead of a fresh release build (the size
        /// limit is checked for release builds only).
        #[arg(long, value_name = "PATH")]
        binary: Option<std::path::PathBuf>,
        /// Where the image goes [default: target/image].
        #[arg(long, value_name = "DIR")]
        out_dir: Option<std::path::PathBuf>,
    },
    /// Build the Debian package (binary, systemd unit, default config, docs,
    /// man pages, completions) into target/debian/ with dpkg-deb.
    Deb {
        /// Package this binary instead of a fresh release build.
        #[arg(long, value_name = "PATH")]
        binary: Option<std::path::PathBuf>,
        /// Where the package goes [default: target/debian].
        #[arg(long, value_name = "DIR")]
        out_dir: Option<std::path::PathBuf>,
        /// xz (smallest) or fast (gzip -1, for test runs).
        #[arg(long, value_enum, default_value = "xz")]
        compression: deb::Compression,
    },
    /// Measure connmon's overhead and speed next to bcc and bpftrace on
    /// this machine; writes bench/report.md and bench/report.svg.
    Bench(bench::Options),
    /// Run the whole test suite: unit tests, the root-only kernel tests and
    /// (without a filter) the 6.1 VM test.
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
        Task::Soak {
            minutes,
            churn_per_second,
            storm_every_seconds,
        } => {
            setup::run(&project)?;
            tasks::soak(&project, minutes, churn_per_second, storm_every_seconds)
        }
        Task::VmTest { kernel, write_docs } => {
            setup::run(&project)?;
            let matrix = match kernel {
                Some(name) => vec![vm::by_name(&name)?],
                None => vm::default_matrix(),
            };
            let binary = tasks::build(&project, false)?;
            let tested = vm::vm_test(&project, &binary, &matrix);
            if write_docs {
                vm::write_docs(&project)?;
            }
            tested
        }
        Task::Manifests { check } => manifests::run(&project, check),
        Task::Image { tag, build_args } => image::run(&project, &tag, &build_args),
        Task::MinimalImage {
            tag,
            binary,
            out_dir,
        } => minimal_image::run(&project, binary, out_dir, &tag),
        Task::Deb {
            binary,
            out_dir,
            compression,
        } => deb::run(&project, binary, out_dir, compression),
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
