//! `fort exec`, `fort cp` and `fort mcp`: the human and MCP-client shortcuts to a VM's guest
//! agent (what `fort exec` shares with `fort shell` is in `process`).

use std::path::Path;

use base64::Engine;
use fort_agent_protocol::process::{ProcessStart, PtySize, Started};
use fort_agent_protocol::tools;
use serde_json::{json, Value};

use super::args::{AgentArgs, CpArgs, ExecArgs, McpArgs};
use super::{exit, process, rawterm, session, Cli, CliError};
use crate::address::{Address, Kind};
use crate::host::agent::{self, Client, Endpoint};
use crate::state::{SqliteStore, StateStore};

/// Bytes per file_read/file_write call in `fort cp`.
const CHUNK: usize = 4 << 20;

/// `fort exec --timeout` when none is given (and the command is neither detached nor typed in).
const DEFAULT_TIMEOUT_SECS: f64 = 600.0;

/// Where the agent of `target` (vm.NAME) is, or `--connect`.
/// `target` as a VM address, and one string output of its record (if recorded).
fn vm_output(cli: &Cli, target: &str, key: &str) -> Result<(Address, Option<String>), CliError> {
    let addr: Address = target
        .parse()
        .map_err(|e: crate::address::AddressError| CliError::Usage(e.to_string()))?;
    if addr.kind != Kind::Vm {
        return Err(CliError::Usage(format!(
            "{addr} is not a VM: expected vm.NAME"
        )));
    }
    let manifest = session::load_manifest(cli).ok();
    let store = SqliteStore::open_readonly(&session::state_dir(cli, manifest.as_ref()))?;
    let value = store.get(&addr)?.and_then(|r| {
        r.outputs
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    Ok((addr, value))
}

pub fn endpoint(cli: &Cli, target: Option<&str>, a: &AgentArgs) -> Result<Endpoint, CliError> {
    if let Some(c) = &a.connect {
        return Ok(c.parse()?);
    }
    let Some(t) = target.filter(|t| !t.is_empty()) else {
        return Err(CliError::Usage(
            "name a VM (vm.NAME) or give --connect ENDPOINT".into(),
        ));
    };
    let (addr, socket) = vm_output(cli, t, "vsock_uds")?;
    match socket {
        Some(s) => Ok(Endpoint::VsockUds(s.into())),
        None => Err(CliError::Usage(format!(
            "{addr} has no recorded guest agent socket: is it applied and running? (or use --connect)"
        ))),
    }
}

/// How the user named the agent, for the commands fort suggests: `vm.NAME`, or
/// `--connect ENDPOINT`.
pub fn named(target: Option<&str>, a: &AgentArgs) -> String {
    match (&a.connect, target) {
        (Some(c), _) => format!("--connect {c}"),
        (None, Some(t)) => t.to_string(),
        (None, None) => "vm.NAME".to_string(),
    }
}

/// `fort exec`: start the command with `process_start` (or `--attach` to one) and follow its
/// output to its end; `--detach` only starts it.
pub async fn exec(cli: &Cli, a: &ExecArgs) -> Result<u8, CliError> {
    // clap's `requires` does not hold --cursor to --attach next to the `last` CMD.
    if a.cursor.is_some() && a.attach.is_none() {
        return Err(CliError::Usage("--cursor N needs --attach ID".into()));
    }
    let ep = endpoint(cli, a.target.as_deref(), &a.agent)?;
    let mut env = process::env(&a.process)?;
    // The terminal's own raw mode only when there is one to type on and its bytes go in.
    let raw = a.tty && a.interactive && rawterm::stdin_is_tty();
    let signals = process::Signals::register()?;
    let client = Client::connect(&ep, a.agent.connect_timeout).await?;
    process::warn_unmounted(&client);
    let (id, cursor, pty) = match a.attach {
        Some(id) => (id, a.cursor.unwrap_or(0), false),
        None => {
            let pty = a.tty.then(|| {
                // The guest's programs draw for the host's terminal (default xterm-256color).
                if let Ok(t) = std::env::var("TERM") {
                    env.entry("TERM".to_string()).or_insert(t);
                }
                rawterm::window_size().unwrap_or(PtySize { rows: 24, cols: 80 })
            });
            // Sessions a person types in and detached servers run until they end.
            let timeout = a
                .timeout
                .or((!a.detach && !raw).then_some(DEFAULT_TIMEOUT_SECS));
            let start = ProcessStart {
                argv: Some(a.command.clone()),
                cwd: a.process.cwd.clone(),
                env: (!env.is_empty()).then_some(env),
                user: a.process.user.clone(),
                pty,
                stdin: Some(a.interactive || a.tty),
                timeout_secs: timeout,
                ..ProcessStart::default()
            };
            let started: Started = client.tool(tools::PROCESS_START, &start).await?;
            if a.detach {
                println!("{}", started.id);
                return Ok(exit::OK);
            }
            (started.id, 0, started.pty)
        }
    };
    let guard = raw.then(rawterm::RawMode::enter).transpose()?;
    let follow = process::Follow {
        client,
        id,
        cursor,
        input: a.interactive,
        pty,
        raw,
    };
    let ended = process::follow(follow, signals).await;
    drop(guard);
    let nl = if raw { "\n" } else { "" };
    match ended? {
        process::Ended::Exit(e) => {
            if e.timed_out {
                match a
                    .timeout
                    .or((a.attach.is_none()).then_some(DEFAULT_TIMEOUT_SECS))
                {
                    Some(t) => {
                        eprintln!("{nl}fort: the command timed out after {t}s and was killed")
                    }
                    None => eprintln!("{nl}fort: the command timed out and was killed"),
                }
            }
            Ok(process::exit_code(&e))
        }
        process::Ended::Lost { cursor, .. } => {
            // With the cursor, reattaching prints only what this run did not.
            let from = if cursor > 0 {
                format!(" --cursor {cursor}")
            } else {
                String::new()
            };
            eprintln!(
                "{nl}fort: lost the connection to the guest agent; the command goes on in the VM: reattach with fort exec {} --attach {id}{from}",
                named(a.target.as_deref(), &a.agent)
            );
            Ok(exit::LOST)
        }
        process::Ended::Signalled(sig) => Ok(128u8.saturating_add(sig as u8)),
    }
}

/// `TARGET:/path` → (TARGET, /path); a local path → None.
fn remote(s: &str) -> Option<(&str, &str)> {
    let (t, p) = s.split_once(':')?;
    (t.is_empty() || t.starts_with("vm.")).then_some((t, p))
}

pub async fn cp(cli: &Cli, a: &CpArgs) -> Result<u8, CliError> {
    match (remote(&a.src), remote(&a.dst)) {
        (None, Some((t, path))) => {
            let ep = endpoint(cli, Some(t), &a.agent)?;
            let data = std::fs::read(&a.src).map_err(|source| CliError::Io {
                what: "cannot read",
                path: a.src.clone().into(),
                source,
            })?;
            let mode = std::fs::metadata(&a.src)
                .map(|m| {
                    format!(
                        "{:04o}",
                        std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777
                    )
                })
                .ok();
            let client = Client::connect(&ep, a.agent.connect_timeout).await?;
            let b64 = base64::engine::general_purpose::STANDARD;
            let mut chunks = data.chunks(CHUNK).peekable();
            let mut first = true;
            if chunks.peek().is_none() {
                write_chunk(&client, path, "", true, mode.as_deref()).await?;
            }
            for chunk in chunks {
                write_chunk(&client, path, &b64.encode(chunk), first, mode.as_deref()).await?;
                first = false;
            }
            eprintln!("copied {} bytes to {}", data.len(), a.dst);
            Ok(exit::OK)
        }
        (Some((t, path)), None) => {
            let ep = endpoint(cli, Some(t), &a.agent)?;
            let client = Client::connect(&ep, a.agent.connect_timeout).await?;
            let mut out = Vec::new();
            loop {
                let r = client
                    .call("file_read", json!({"path": path, "offset": out.len(), "length": CHUNK, "encoding": "base64"}))
                    .await?;
                if r.is_error {
                    return Err(CliError::Usage(r.text));
                }
                let chunk = r
                    .structured
                    .get("content")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(chunk)
                    .map_err(|e| CliError::Usage(format!("the agent sent invalid base64: {e}")))?;
                out.extend_from_slice(&bytes);
                if r.structured.get("eof").and_then(Value::as_bool) != Some(false)
                    || bytes.is_empty()
                {
                    break;
                }
            }
            let dst = Path::new(&a.dst);
            std::fs::write(dst, &out).map_err(|source| CliError::Io {
                what: "cannot write",
                path: dst.to_path_buf(),
                source,
            })?;
            eprintln!("copied {} bytes to {}", out.len(), a.dst);
            Ok(exit::OK)
        }
        _ => Err(CliError::Usage(
            "exactly one of SRC and DST must be in a VM (vm.NAME:/path, or :/path with --connect)"
                .into(),
        )),
    }
}

async fn write_chunk(
    client: &Client,
    path: &str,
    b64: &str,
    first: bool,
    mode: Option<&str>,
) -> Result<(), CliError> {
    let mut args = json!({"path": path, "content": b64, "encoding": "base64", "append": !first, "atomic": false});
    if let (true, Some(m)) = (first, mode) {
        args["mode"] = json!(m);
    }
    let r = client.call("file_write", args).await?;
    if r.is_error {
        return Err(CliError::Usage(r.text));
    }
    Ok(())
}

/// Relay stdin/stdout to the agent byte for byte: the MCP client speaks to the agent itself.
pub async fn mcp(cli: &Cli, a: &McpArgs) -> Result<u8, CliError> {
    let ep = endpoint(cli, a.target.as_deref(), &a.agent)?;
    let mut stream = agent::connect(&ep, a.agent.connect_timeout).await?;
    let mut stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    match tokio::io::copy_bidirectional(&mut stdio, &mut stream).await {
        Ok(_) => Ok(exit::OK),
        // The client went away or the VM stopped: either way the session is over.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(exit::OK)
        }
        Err(e) => Err(CliError::Agent(agent::AgentError::Io(e))),
    }
}

/// `fort console vm.NAME`: the VM's serial console log, the same file for every VMM.
pub async fn console(cli: &Cli, a: &super::args::ConsoleArgs) -> Result<u8, CliError> {
    let (addr, path) = vm_output(cli, &a.target, "console_log")?;
    let path = path.map(std::path::PathBuf::from).ok_or_else(|| {
        CliError::Usage(format!(
            "{addr} has no recorded console log: is it applied?"
        ))
    })?;
    let mut f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| CliError::Usage(format!("cannot open {}: {e}", path.display())))?;
    let mut out = tokio::io::stdout();
    loop {
        tokio::io::copy(&mut f, &mut out)
            .await
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
        if !a.follow {
            return Ok(exit::OK);
        }
        tokio::io::AsyncWriteExt::flush(&mut out).await.ok();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
