//! `fort exec`, `fort cp` and `fort mcp`: the human and MCP-client shortcuts to a VM's guest
//! agent.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use serde_json::{json, Value};

use super::args::{AgentArgs, CpArgs, ExecArgs, McpArgs};
use super::{exit, session, Cli, CliError};
use crate::address::{Address, Kind};
use crate::host::agent::{self, Client, Endpoint};
use crate::state::{SqliteStore, StateStore};

/// Bytes per file_read/file_write call in `fort cp`.
const CHUNK: usize = 4 << 20;

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

pub(super) fn endpoint(
    cli: &Cli,
    target: Option<&str>,
    a: &AgentArgs,
) -> Result<Endpoint, CliError> {
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

pub async fn exec(cli: &Cli, a: &ExecArgs) -> Result<u8, CliError> {
    let ep = endpoint(cli, a.target.as_deref(), &a.agent)?;
    let mut env = serde_json::Map::new();
    for kv in &a.env {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(CliError::Usage(format!("--env {kv}: expected KEY=VALUE")));
        };
        env.insert(k.to_string(), json!(v));
    }
    let mut args =
        json!({"argv": a.command, "timeout_secs": a.timeout, "env": env, "stream": true});
    if let Some(c) = &a.cwd {
        args["cwd"] = json!(c);
    }
    if let Some(u) = &a.user {
        args["user"] = json!(u);
    }
    let mut client = Client::connect(&ep, a.agent.connect_timeout).await?;
    // A drive the agent could not mount is said on every exec: the command may depend on it.
    for m in client.mounts() {
        if let Some(e) = &m.error {
            eprintln!(
                "fort: warning: drive.{} is not mounted at {}: {e}",
                m.drive, m.path
            );
        }
    }
    // Output is printed as the agent streams it, not when the command ends.
    let mut print = |n: &Value| {
        if n.get("method").and_then(Value::as_str) != Some("notifications/fort/output") {
            return;
        }
        let data = n
            .pointer("/params/data")
            .and_then(Value::as_str)
            .unwrap_or("");
        let _ = match n.pointer("/params/stream").and_then(Value::as_str) {
            Some("stderr") => std::io::stderr().write_all(data.as_bytes()),
            _ => {
                let mut o = std::io::stdout();
                o.write_all(data.as_bytes()).and_then(|()| o.flush())
            }
        };
    };
    let r = client.call_with("run_command", args, &mut print).await?;
    if r.is_error {
        return Err(CliError::Usage(r.text));
    }
    let s = &r.structured;
    for (flag, stream) in [
        ("stdout_truncated", "stdout"),
        ("stderr_truncated", "stderr"),
    ] {
        if s.get(flag).and_then(Value::as_bool) == Some(true) {
            eprintln!("fort: {stream} was truncated by the agent's output cap");
        }
    }
    if s.get("timed_out").and_then(Value::as_bool) == Some(true) {
        eprintln!(
            "fort: the command timed out after {}s and was killed",
            a.timeout
        );
        return Ok(124);
    }
    // Like a shell: the exit code, or 128 + the signal that killed it.
    Ok(
        match (
            s.get("exit_code").and_then(Value::as_i64),
            s.get("signal").and_then(Value::as_i64),
        ) {
            (Some(c), _) => u8::try_from(c).unwrap_or(exit::ERROR),
            (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(exit::ERROR),
            _ => exit::ERROR,
        },
    )
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
            let mut client = Client::connect(&ep, a.agent.connect_timeout).await?;
            let b64 = base64::engine::general_purpose::STANDARD;
            let mut chunks = data.chunks(CHUNK).peekable();
            let mut first = true;
            if chunks.peek().is_none() {
                write_chunk(&mut client, path, "", true, mode.as_deref()).await?;
            }
            for chunk in chunks {
                write_chunk(
                    &mut client,
                    path,
                    &b64.encode(chunk),
                    first,
                    mode.as_deref(),
                )
                .await?;
                first = false;
            }
            eprintln!("copied {} bytes to {}", data.len(), a.dst);
            Ok(exit::OK)
        }
        (Some((t, path)), None) => {
            let ep = endpoint(cli, Some(t), &a.agent)?;
            let mut client = Client::connect(&ep, a.agent.connect_timeout).await?;
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
    client: &mut Client,
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
