//! `fort snapshot vm.NAME [--name LABEL | --list | --prune [--keep N]]` and `fort restore
//! vm.NAME LABEL`: user checkpoints of one VM. Both take the state directory's lock, as
//! `fort apply` does, so they never race an apply or a `fort watch` pass.

use std::path::Path;
use std::time::{Duration, Instant};

use super::args::{RestoreArgs, SnapshotArgs};
use super::{exit, session, Cli, CliError};
use crate::address::{Address, Kind};
use crate::manifest::{Manifest, Resource};
use crate::resources::vm::checkpoint;
use crate::state::{SqliteStore, StateLock};

fn vm_address(target: &str) -> Result<Address, CliError> {
    let addr: Address = target
        .parse()
        .map_err(|e: crate::address::AddressError| CliError::Usage(e.to_string()))?;
    if addr.kind != Kind::Vm {
        return Err(CliError::Usage(format!(
            "{addr} is not a VM: expected vm.NAME"
        )));
    }
    Ok(addr)
}

fn desired<'m>(manifest: &'m Manifest, addr: &Address) -> Result<&'m Resource, CliError> {
    manifest
        .resources
        .get(addr)
        .ok_or_else(|| CliError::Usage(format!("{addr} is not in the manifest")))
}

async fn lock(state_dir: &Path, timeout: Duration) -> Result<StateLock, CliError> {
    let dir = state_dir.to_path_buf();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    tokio::task::spawn_blocking(move || StateLock::acquire(&dir, timeout, &command))
        .await
        .map_err(|e| CliError::Usage(format!("lock task failed: {e}")))?
        .map_err(CliError::from)
}

pub async fn snapshot(cli: &Cli, args: &SnapshotArgs) -> Result<u8, CliError> {
    let addr = vm_address(&args.target)?;
    let manifest = session::load_manifest(cli)?;
    let state_dir = session::state_dir(cli, Some(&manifest));
    let res = desired(&manifest, &addr)?;
    if args.list {
        let ctx = session::ctx(
            &state_dir,
            SqliteStore::open_readonly(&state_dir)?,
            false,
            Some(&manifest),
        );
        print_list(cli, &addr, &checkpoint::list(&ctx, &addr)?);
        return Ok(exit::OK);
    }
    let _lock = lock(&state_dir, args.lock_timeout).await?;
    let ctx = session::ctx(
        &state_dir,
        SqliteStore::open(&state_dir)?,
        false,
        Some(&manifest),
    );
    if args.prune {
        let keep = match (args.keep, &res.spec) {
            (Some(k), _) => k,
            (None, crate::manifest::Spec::Vm(v)) if v.keep.is_some() => {
                v.keep.unwrap_or_default() as usize
            }
            _ => {
                return Err(CliError::Usage(format!(
                    "fort snapshot {addr} --prune needs --keep N (the VM has no `keep`)"
                )))
            }
        };
        let removed = checkpoint::prune(&ctx, &addr, keep)?;
        if removed.is_empty() {
            println!("{addr}: no checkpoint removed (keep = {keep})");
        }
        for l in removed {
            println!("{addr}: removed checkpoint \"{l}\"");
        }
        return Ok(exit::OK);
    }
    let t0 = Instant::now();
    let (cp, pruned) = checkpoint::take(&ctx, res, args.name.clone()).await?;
    println!(
        "{addr}: checkpoint \"{}\" taken in {:.1}s: {} ({})",
        cp.label,
        t0.elapsed().as_secs_f64(),
        cp.summary(),
        cp.dir.display()
    );
    for l in pruned {
        println!("{addr}: removed checkpoint \"{l}\" (keep)");
    }
    Ok(exit::OK)
}

fn print_list(cli: &Cli, addr: &Address, all: &[crate::host::checkpoint::Checkpoint]) {
    if cli.json {
        let v: Vec<_> = all
            .iter()
            .map(|c| {
                serde_json::json!({
                    "label": c.label, "dir": c.dir, "created_unix": c.meta.created_unix,
                    "state_bytes": c.meta.state_bytes, "drives": c.drives,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else if all.is_empty() {
        println!("{addr} has no checkpoints.");
    } else {
        for c in all {
            println!("{}  {}", c.label, c.summary());
        }
    }
}

pub async fn restore(cli: &Cli, args: &RestoreArgs) -> Result<u8, CliError> {
    let addr = vm_address(&args.target)?;
    let manifest = session::load_manifest(cli)?;
    let state_dir = session::state_dir(cli, Some(&manifest));
    let res = desired(&manifest, &addr)?;
    let _lock = lock(&state_dir, args.lock_timeout).await?;
    let ctx = session::ctx(
        &state_dir,
        SqliteStore::open(&state_dir)?,
        false,
        Some(&manifest),
    );
    let protected = checkpoint::protected_drives(&manifest.resources);
    let t0 = Instant::now();
    let cp = checkpoint::restore(&ctx, res, &args.label, &protected, args.allow_data_loss).await?;
    println!(
        "{addr}: restored to checkpoint \"{}\" in {:.1}s ({})",
        cp.label,
        t0.elapsed().as_secs_f64(),
        cp.summary()
    );
    Ok(exit::OK)
}
