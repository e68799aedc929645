//! `fort shell vm.NAME [-- CMD…]`: the user's login shell (or CMD) on a PTY in the guest, the
//! local terminal raw, its size sent at start and on every SIGWINCH; the remote exit status
//! becomes fort's, and the terminal is restored on every way out (docs/cli.md).

use fort_agent_protocol::process::{ProcessStart, PtySize, Started};
use fort_agent_protocol::tools;

use super::agent::{endpoint, named};
use super::args::ShellArgs;
use super::{exit, process, rawterm, Cli, CliError};
use crate::host::agent::Client;

pub async fn shell(cli: &Cli, a: &ShellArgs) -> Result<u8, CliError> {
    let who = named(a.target.as_deref(), &a.agent);
    if !rawterm::stdin_is_tty() {
        eprintln!(
            "error: fort shell needs a terminal: stdin is not a TTY; run a command with fort exec {who} -- CMD instead"
        );
        return Ok(exit::USAGE);
    }
    let ep = endpoint(cli, a.target.as_deref(), &a.agent)?;
    let mut env = process::env(&a.process)?;
    if let Ok(t) = std::env::var("TERM") {
        env.entry("TERM".to_string()).or_insert(t);
    }
    // Before the size is read, so that a resize in between is not missed.
    let signals = process::Signals::register()?;
    let client = Client::connect(&ep, a.agent.connect_timeout).await?;
    process::warn_unmounted(&client);
    let size = rawterm::window_size().unwrap_or(PtySize { rows: 24, cols: 80 });
    let start = ProcessStart {
        // Neither argv nor command: the agent starts the user's login shell.
        argv: (!a.command.is_empty()).then(|| a.command.clone()),
        cwd: a.process.cwd.clone(),
        env: (!env.is_empty()).then_some(env),
        user: a.process.user.clone(),
        pty: Some(size),
        stdin: Some(true),
        ..ProcessStart::default()
    };
    let started: Started = client.tool(tools::PROCESS_START, &start).await?;
    let guard = rawterm::RawMode::enter()?;
    let follow = process::Follow {
        client,
        id: started.id,
        cursor: 0,
        input: true,
        pty: true,
        raw: true,
    };
    let ended = process::follow(follow, signals).await;
    // The terminal is given back before anything is said.
    drop(guard);
    match ended? {
        process::Ended::Exit(e) => Ok(process::exit_code(&e)),
        process::Ended::Lost { .. } => {
            let whose = match &a.agent.connect {
                Some(c) => format!("the agent at {c}"),
                None => format!("{who}'s agent"),
            };
            // On a line of its own: the shell's last output may not end with one.
            eprintln!("\nfort: the connection to {whose} was lost (the VM stopped?)");
            Ok(exit::LOST)
        }
        process::Ended::Signalled(sig) => Ok(128u8.saturating_add(sig as u8)),
    }
}
