//! The command line: clap definitions (`args.rs`), one module per group of commands, and the
//! error type the binary prints with its cause chain.

pub mod agent;
pub mod apply;
pub mod args;
pub mod checkpoint;
pub mod diff;
pub mod doctor;
mod doctor_confine;
pub mod fleet;
pub mod forward;
pub mod forward_spec;
pub mod gitops;
pub mod passes;
pub mod plan;
pub mod process;
pub mod rawterm;
pub mod sandbox;
pub mod serve;
pub mod session;
pub mod shell;
pub mod state;
pub mod status;
pub mod term;
pub mod validate;
pub mod watch;

use std::path::PathBuf;

pub use args::{Cli, Command};

use crate::manifest::ManifestError;

/// Exit codes (documented in docs/cli.md).
pub mod exit {
    /// Success; for `plan --detailed-exitcode`: no changes.
    pub const OK: u8 = 0;
    /// An error (invalid manifest, failed action, …).
    pub const ERROR: u8 = 1;
    /// `plan --detailed-exitcode`: there are changes.
    pub const CHANGES: u8 = 2;
    /// Interrupted (Ctrl-C / SIGTERM) after finishing the running actions.
    pub const INTERRUPTED: u8 = 130;
    /// `fort exec`/`fort shell`: the command was killed at its `--timeout` (as timeout(1)).
    pub const TIMED_OUT: u8 = 124;
    /// `fort exec`/`fort shell`: the connection to the guest agent was lost (as ssh's 255).
    pub const LOST: u8 = 255;
    /// `fort shell` without a terminal (a usage error, as clap's).
    pub const USAGE: u8 = 2;
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Lock(#[from] crate::state::LockError),
    #[error(transparent)]
    Serve(#[from] crate::host::mcp_http::HttpError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
    #[error(transparent)]
    Resource(#[from] crate::resources::ResourceError),
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("saved plan {} is unreadable", path.display())]
    PlanFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("saved plan {} is stale: {why} since it was made; run `fort plan -out {}` again", path.display(), path.display())]
    StalePlan { path: PathBuf, why: String },
    #[error("{address}")]
    Image {
        address: crate::address::Address,
        #[source]
        source: Box<crate::host::oci::OciError>,
    },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Agent(#[from] crate::host::agent::AgentError),
    // `fort exec` and `fort shell` (issue 15).
    #[error(transparent)]
    Terminal(#[from] rawterm::TerminalError),
    #[error("cannot write the command's output")]
    Output(#[source] std::io::Error),
    #[error("cannot watch for signals")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Forward(#[from] crate::host::forward::ForwardError),
    #[error(transparent)]
    ForwardSpec(#[from] forward_spec::SpecError),
    #[error(transparent)]
    Git(#[from] crate::gitread::GitError),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    #[error(transparent)]
    Trust(#[from] crate::commit_trust::TrustError),
    #[error(transparent)]
    GitSync(#[from] crate::host::git::GitError),
    /// `fort apply --git`: the branch's newest commit was not applied (the reason says why).
    #[error("{0}")]
    GitSkipped(String),
}

impl CliError {
    /// Validation problems, each printed on its own `error:` line.
    pub fn diagnostics(&self) -> &[crate::manifest::Diagnostic] {
        match self {
            CliError::Manifest(m) => m.diagnostics(),
            CliError::Git(g) => g.diagnostics(),
            _ => &[],
        }
    }

    /// A hint printed after the error, when there is a useful next step.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            CliError::Lock(_) => Some("another fort is applying to this state directory; wait for it, or raise --lock-timeout"),
            CliError::Manifest(_) => Some("fix the manifest; nothing was changed on the host"),
            CliError::Git(crate::gitread::GitError::Invalid { .. }) => {
                Some("fix the manifest at that revision; nothing was changed on the host")
            }
            CliError::State(crate::state::StateError::TooNew { .. }) => Some("this state directory was written by a newer fort"),
            _ => None,
        }
    }
}

/// Run the parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> Result<u8, CliError> {
    match &cli.command {
        Command::Validate(a) => validate::validate(&cli, a),
        Command::Diff(a) => diff::diff(&cli, a),
        Command::Fleet(args::FleetCommand::Status(a)) => fleet::status(a),
        Command::Plan(a) => plan::plan(&cli, a).await,
        Command::Apply(a) => apply::apply(&cli, a).await,
        Command::Destroy(a) => apply::destroy(&cli, a).await,
        Command::State(s) => state::state(&cli, s),
        Command::History(h) => state::history(&cli, h),
        Command::Exec(a) => agent::exec(&cli, a).await,
        Command::Shell(a) => shell::shell(&cli, a).await,
        Command::Cp(a) => agent::cp(&cli, a).await,
        Command::Mcp(a) if cli.host.as_deref() == Some("") => serve::mcp_host(&cli, a).await,
        Command::Mcp(a) => agent::mcp(&cli, a).await,
        Command::Serve(a) => serve::serve(&cli, a).await,
        Command::PortForward(a) => forward::port_forward(&cli, a).await,
        Command::Doctor => doctor::doctor(&cli).await,
        Command::Console(a) => agent::console(&cli, a).await,
        Command::Watch(a) => watch::watch(&cli, a).await,
        Command::Status => status::status(&cli),
        Command::Snapshot(a) => checkpoint::snapshot(&cli, a).await,
        Command::Restore(a) => checkpoint::restore(&cli, a).await,
        Command::Schema => {
            print!("{}", crate::manifest::json_schema_string());
            Ok(exit::OK)
        }
    }
}
