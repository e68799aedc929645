//! `fort status`: one table of everything recorded, with what the host says about it now
//! (VMs: running or not, address, uptime, restarts, mounted drives; drives: size and clone method; networks;
//! images and assets), and with `--git` the commit the host converged to, the one it is
//! trying, a skipped one and why, and since when fetching fails.

use serde_json::{json, Value};

use super::{exit, session, Cli, CliError};
use crate::address::Kind;
use crate::host::vmm::process::Proc;
use crate::manifest::units::format_size;
use crate::state::{SqliteStore, StateStore};

fn uptime_secs(p: &Proc) -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let up: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let started = p.start_time as f64 / tck.max(1) as f64;
    Some((up - started).max(0.0) as u64)
}

fn human_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

pub fn status(cli: &Cli) -> Result<u8, CliError> {
    let manifest = session::load_manifest(cli).ok();
    let store = SqliteStore::open_readonly(&session::state_dir(cli, manifest.as_ref()))?;
    let follow = super::gitops::status(&store)?;
    let mut rows = Vec::new();
    for (addr, rec) in store.resources()? {
        let o = &rec.outputs;
        let mut row = json!({ "address": addr.to_string(), "recorded": rec.status.as_str() });
        let (state, detail) = match addr.kind {
            Kind::Vm => {
                let vmm: Option<Proc> = o
                    .pointer("/started/vmm")
                    .and_then(|v| serde_json::from_value(v.clone()).ok());
                let history = store.history(&addr)?;
                let restarts = history.iter().filter(|h| h.action == "restart").count();
                let crashes = history.iter().filter(|h| h.action == "crash").count();
                let ip = o
                    .pointer("/network/ip")
                    .and_then(Value::as_str)
                    .unwrap_or("-");
                row["ip"] = json!(ip);
                row["restarts"] = json!(restarts);
                row["crashes"] = json!(crashes);
                let state = match vmm {
                    Some(p) if p.alive() => {
                        let up = uptime_secs(&p);
                        row["uptime_secs"] = json!(up);
                        row["pid"] = json!(p.pid);
                        // Started by an apply that has not seen its agent answer (yet).
                        let what = if o.get("paused").and_then(Value::as_bool) == Some(true) {
                            "paused"
                        } else if rec.status == crate::state::Status::Ready {
                            "running"
                        } else {
                            "starting"
                        };
                        format!("{what} (up {})", up.map_or_else(|| "?".into(), human_secs))
                    }
                    Some(_) => {
                        let last = history.iter().rev().find(|h| h.action == "crash");
                        if let Some(l) = last {
                            row["last_crash"] = json!(l.detail);
                        }
                        "crashed".to_string()
                    }
                    None => match o.get("suspended").filter(|s| !s.is_null()) {
                        Some(s) => {
                            row["snapshot"] = s.clone();
                            let bytes = s.get("bytes").and_then(Value::as_u64).unwrap_or(0);
                            let created =
                                s.get("created_unix").and_then(Value::as_u64).unwrap_or(0);
                            let age = crate::host::snapshot::now_unix().saturating_sub(created);
                            format!(
                                "suspended ({}, {} old)",
                                crate::manifest::units::human_size(bytes),
                                human_secs(age)
                            )
                        }
                        None => "stopped".to_string(),
                    },
                };
                let mut detail = format!(
                    "{} ip {ip}, restarts {restarts}",
                    o.get("vmm").and_then(Value::as_str).unwrap_or("?")
                );
                if let Some(l) = row.get("last_crash").and_then(Value::as_str) {
                    detail.push_str(&format!("; last crash: {l}"));
                }
                // A sandbox (docs/sandboxes.md): its template and the time it has left.
                if let Some(i) = manifest.as_ref().and_then(|m| m.instances.get(&addr.name)) {
                    let left = i.expires.saturating_sub(crate::host::sandboxes::now());
                    row["sandbox"] = json!({"template": i.sandbox, "expires_unix": i.expires, "remaining_secs": left});
                    detail.push_str(&format!(
                        "; sandbox.{} expires in {}",
                        i.sandbox,
                        human_secs(left)
                    ));
                }
                // Data drives as the agent reported them when this boot became ready.
                if let Some(mounts) = o.get("mounts").and_then(Value::as_array) {
                    row["mounts"] = json!(mounts);
                    for m in mounts {
                        let drive = m.get("drive").and_then(Value::as_str).unwrap_or("?");
                        let path = m.get("path").and_then(Value::as_str).unwrap_or("?");
                        match m.get("error").and_then(Value::as_str) {
                            Some(e) => detail
                                .push_str(&format!("; drive.{drive} NOT mounted at {path}: {e}")),
                            None => detail.push_str(&format!("; drive.{drive} on {path}")),
                        }
                    }
                }
                (state, detail)
            }
            Kind::Drive => {
                let size = o.get("size").and_then(Value::as_u64).unwrap_or(0);
                let method = o.get("method").and_then(Value::as_str).unwrap_or("?");
                let path = o.get("path").and_then(Value::as_str).unwrap_or("");
                let present = std::path::Path::new(path).exists();
                row["size"] = json!(size);
                row["method"] = json!(method);
                (
                    if present { "present" } else { "missing" }.to_string(),
                    format!("{} ({method})", format_size(size)),
                )
            }
            Kind::Network => {
                let bridge = o.get("bridge").and_then(Value::as_str).unwrap_or("?");
                let up = std::path::Path::new("/sys/class/net").join(bridge).exists();
                row["bridge"] = json!(bridge);
                (
                    if up { "up" } else { "missing" }.to_string(),
                    format!(
                        "bridge {bridge}, {}{}{}",
                        o.get("cidr").and_then(Value::as_str).unwrap_or("?"),
                        if o.get("nat").and_then(Value::as_bool) == Some(true) {
                            ", nat"
                        } else {
                            ""
                        },
                        if o.get("isolated").and_then(Value::as_bool) == Some(true) {
                            ", isolated"
                        } else {
                            ""
                        },
                    ),
                )
            }
            Kind::Template => {
                let image = o.get("image").and_then(Value::as_str).unwrap_or("");
                let present = std::path::Path::new(image).exists();
                row["image"] = json!(image);
                (
                    if present { "present" } else { "missing" }.to_string(),
                    format!(
                        "image {} ({})",
                        image,
                        format_size(o.get("size").and_then(Value::as_u64).unwrap_or(0))
                    ),
                )
            }
            _ => {
                let path = o.get("path").and_then(Value::as_str).unwrap_or("");
                let present = std::path::Path::new(path).exists();
                (
                    if present { "cached" } else { "missing" }.to_string(),
                    format!(
                        "{path} ({} bytes)",
                        o.get("size").and_then(Value::as_u64).unwrap_or(0)
                    ),
                )
            }
        };
        row["state"] = json!(state);
        row["detail"] = json!(detail);
        rows.push(row);
    }
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "git": follow.as_ref().map(super::gitops::status_json),
                "resources": rows,
            }))
            .unwrap_or_default()
        );
        return Ok(exit::OK);
    }
    if let Some(f) = &follow {
        for l in super::gitops::status_lines(f) {
            println!("{l}");
        }
        println!();
    }
    if rows.is_empty() {
        println!("No resources recorded.");
        return Ok(exit::OK);
    }
    let w_addr = rows
        .iter()
        .map(|r| r["address"].as_str().unwrap_or("").len())
        .max()
        .unwrap_or(7)
        .max(7);
    let w_state = rows
        .iter()
        .map(|r| r["state"].as_str().unwrap_or("").len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!("{:<w_addr$}  {:<w_state$}  DETAILS", "ADDRESS", "STATE");
    for r in &rows {
        println!(
            "{:<w_addr$}  {:<w_state$}  {}",
            r["address"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            r["detail"].as_str().unwrap_or("")
        );
    }
    Ok(exit::OK)
}
