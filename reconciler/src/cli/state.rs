//! `fort state list|show` and `fort history`: read-only views of recorded state.

use super::args::{HistoryArgs, StateCommand};
use super::{exit, session, Cli, CliError};
use crate::state::{SqliteStore, StateStore};

fn open(cli: &Cli) -> Result<SqliteStore, CliError> {
    // The manifest only tells where the state is; a broken or absent one must not stop
    // anyone from reading state.
    let manifest = session::load_manifest(cli).ok();
    let dir = session::state_dir(cli, manifest.as_ref());
    Ok(SqliteStore::open_readonly(&dir)?)
}

fn time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn state(cli: &Cli, cmd: &StateCommand) -> Result<u8, CliError> {
    let store = open(cli)?;
    match cmd {
        StateCommand::List => {
            let all = store.resources()?;
            if cli.json {
                let v: Vec<_> = all.values().collect();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else if all.is_empty() {
                println!("No resources recorded.");
            } else {
                let w = all
                    .keys()
                    .map(|a| a.to_string().len())
                    .max()
                    .unwrap_or(7)
                    .max(7);
                let sw = all
                    .values()
                    .map(|r| r.status.as_str().len())
                    .max()
                    .unwrap_or(6)
                    .max(6);
                println!("{:w$}  {:sw$}  UPDATED", "ADDRESS", "STATUS");
                for r in all.values() {
                    println!(
                        "{:w$}  {:sw$}  {}",
                        r.address.to_string(),
                        r.status.as_str(),
                        time(r.updated_at)
                    );
                }
            }
        }
        StateCommand::Show { address } => {
            let Some(r) = store.get(address)? else {
                return Err(CliError::Usage(format!(
                    "{address} is not recorded in state"
                )));
            };
            let checkpoints = if address.kind == crate::address::Kind::Vm {
                let manifest = session::load_manifest(cli).ok();
                let dir = session::state_dir(cli, manifest.as_ref());
                crate::host::checkpoint::list(&dir, &address.name).unwrap_or_default()
            } else {
                Vec::new()
            };
            if cli.json {
                let mut v = serde_json::to_value(&r).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    let list: Vec<_> = checkpoints
                        .iter()
                        .map(|c| {
                            serde_json::json!({
                                "label": c.label, "dir": c.dir,
                                "created_unix": c.meta.created_unix,
                                "state_bytes": c.meta.state_bytes, "drives": c.drives,
                            })
                        })
                        .collect();
                    o.insert("checkpoints".into(), list.into());
                }
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!("address:  {}", r.address);
                println!("status:   {}", r.status.as_str());
                if let Some(e) = &r.error {
                    println!("error:    {e}");
                }
                println!("created:  {}", time(r.created_at));
                println!("updated:  {}", time(r.updated_at));
                println!(
                    "depends:  {}",
                    r.deps
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                println!(
                    "spec:     {}",
                    serde_json::to_string_pretty(&r.spec).unwrap_or_default()
                );
                println!(
                    "outputs:  {}",
                    serde_json::to_string_pretty(&r.outputs).unwrap_or_default()
                );
                if !checkpoints.is_empty() {
                    println!("checkpoints:");
                    for c in &checkpoints {
                        println!("  {}  {}", c.label, c.summary());
                    }
                }
            }
        }
    }
    Ok(exit::OK)
}

pub fn history(cli: &Cli, args: &HistoryArgs) -> Result<u8, CliError> {
    let store = open(cli)?;
    let entries = store.history(&args.address)?;
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).unwrap_or_default()
        );
        return Ok(exit::OK);
    }
    if entries.is_empty() {
        println!("No history for {}.", args.address);
        return Ok(exit::OK);
    }
    for e in entries {
        let st = |s: Option<crate::state::Status>| s.map_or("-", |s| s.as_str());
        println!(
            "{}  run {:<4} {:<8} {} → {}  {}",
            time(e.at),
            e.run_id.map_or_else(|| "-".to_string(), |r| r.to_string()),
            e.action,
            st(e.from_status),
            st(e.to_status),
            e.detail
        );
    }
    Ok(exit::OK)
}
