//! The `fort` binary: parse arguments, set up logging and the runtime, print errors with their
//! cause chain and a hint.

use std::process::ExitCode;

use clap::Parser;
use fort::cli::{self, Cli};

fort::lean_mimalloc!();

fn main() -> ExitCode {
    let cli = Cli::parse_from(cli::args::normalize_args(std::env::args()));
    init_logging(
        cli.verbose,
        matches!(cli.command, cli::args::Command::Watch(_)),
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::exit::ERROR);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let hint = e.hint();
            let diagnostics = e.diagnostics();
            if diagnostics.is_empty() {
                eprintln!("error: {:#}", anyhow::Error::new(e));
            } else {
                for d in diagnostics {
                    eprintln!("error: {d}");
                }
            }
            if let Some(h) = hint {
                eprintln!("hint: {h}");
            }
            ExitCode::from(cli::exit::ERROR)
        }
    }
}

fn init_logging(verbose: u8, daemon: bool) {
    let default = match verbose {
        // `fort watch` is a service: its passes are what it logs.
        0 if daemon => "info",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // Plain lines when not on a terminal (journald adds its own timestamps and colours).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
