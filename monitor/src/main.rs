//! The `connmon` binary: parse flags, set up logging, run a subcommand.

use std::process::ExitCode;

use clap::Parser as _;
use connmon::{
    cli::{Cli, Command},
    output::LogFormat,
};

/// Exit code for bad flags, environment or config: one line, like clap's.
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let rendered = error.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("connmon: {first}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    if let Command::Generate(args) = &cli.command {
        if args.what == connmon::cli::Generated::Man && args.out_dir.is_none() {
            eprintln!("connmon: generate man needs --out-dir DIR");
            return ExitCode::from(USAGE_ERROR);
        }
        return match connmon::commands::generate::run(args, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("connmon: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    // `run` settles its settings first: the config file can set the log format.
    let settings = match &cli.command {
        Command::Run(args) => match args.settings(cli.log_format) {
            Ok(settings) => Some(settings),
            Err(error) => {
                eprintln!("connmon: invalid setting: {error}");
                return ExitCode::from(USAGE_ERROR);
            }
        },
        _ => None,
    };
    init_logging(
        settings
            .as_ref()
            .map_or(cli.log_format.unwrap_or_default(), |s| s.log_format),
    );
    if let Err(error) = connmon::privileges::raise_effective() {
        tracing::warn!(%error, "cannot raise the permitted capabilities to effective");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("connmon: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Trace(args) => connmon::commands::trace::run(args)
                .await
                .map_err(Failure::Runtime),
            Command::Audit(args) => {
                if let Err(error) = args.paths.path_timeouts() {
                    return Err(Failure::Usage(error));
                }
                connmon::commands::audit::run(args).map_err(Failure::Runtime)
            }
            Command::Run(_) => match settings {
                Some(settings) => connmon::commands::run::run(settings)
                    .await
                    .map_err(Failure::Runtime),
                None => Err(Failure::Usage("no settings".into())),
            },
            Command::Top(args) => connmon::commands::top::run(args)
                .await
                .map_err(Failure::Runtime),
            Command::Generate(_) => Ok(()),
        }
    });
    // Blocking work still under way (an alert POST to a receiver that never
    // answers, an audit) must not hold the exit: dropping the runtime would
    // wait for it without bound.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("connmon: invalid setting: {message}");
            ExitCode::from(USAGE_ERROR)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("connmon: {error:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// Bad settings: exit code 2.
    Usage(String),
    Runtime(anyhow::Error),
}

/// Logs go to stderr (stdout carries events); `RUST_LOG` filters them.
/// Logged fields can hold process names, which any process chooses: every
/// line is escaped (one event stays one line, no terminal sequences), and
/// therefore carries no colours of its own.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match format {
        LogFormat::Plain => logs
            .with_writer(|| connmon::output::escape::EscapingWriter(std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .with_writer(|| connmon::output::escape::JsonEscapingWriter(std::io::stderr()))
            .init(),
    }
}
