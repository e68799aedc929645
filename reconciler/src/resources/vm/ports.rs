//! A VM's published ports: its port table (`crate::host::net::ports`) follows its address
//! lease — made once the VM is attached, replaced in one batch when `ports` change (in
//! place: the VM keeps running), deleted when the VM leaves its network or is destroyed. The
//! table's name is recorded before the table exists; what it publishes once it does.

use super::super::{Ctx, ResourceError};
use super::VmOutputs;
use crate::address::Address;
use crate::crash::Point;
use crate::host::net::listeners;
use crate::host::net::nft;
use crate::host::net::ports::{self, PortsSpec};
use crate::manifest::ports::{parse_port_map, PortMap};
use crate::manifest::VmSpec;
use crate::state::Record;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::host::net::NetError> + Send + 'static,
) -> Result<T, ResourceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ResourceError::Check(format!("netfilter task failed: {e}")))?
        .map_err(ResourceError::from)
}

/// Entries were validated when the manifest was read; one that no longer parses (a record
/// of another fort) is left out rather than failing the VM.
fn maps(entries: &[String]) -> Vec<PortMap> {
    entries
        .iter()
        .filter_map(|p| parse_port_map(p).ok())
        .collect()
}

/// What the recorded outputs say the port table holds (`None`: no table).
pub(super) fn recorded_spec(out: &VmOutputs) -> Option<PortsSpec> {
    Some(PortsSpec {
        name: out.ports_table.clone()?,
        guest: out.network.as_ref()?.ip,
        maps: maps(&out.published),
    })
}

/// Step `vm.ports`: publish exactly the spec's ports (none: the table goes).
pub(super) async fn publish(
    ctx: &Ctx,
    addr: &Address,
    spec: &VmSpec,
    out: &mut VmOutputs,
) -> Result<(), ResourceError> {
    let Some(guest) = out.network.as_ref().map(|a| a.ip) else {
        return unpublish(ctx, addr, out).await;
    };
    if spec.ports.is_empty() {
        return unpublish(ctx, addr, out).await;
    }
    let name = ports::table_name(&addr.name, &ctx.state_id());
    if out.ports_table.as_deref() != Some(name.as_str()) {
        unpublish_quietly(out).await?;
        out.ports_table = Some(name.clone());
        ctx.step(addr, Point::VmIntent, out)?;
    }
    let table = PortsSpec {
        name,
        guest,
        maps: maps(&spec.ports),
    };
    blocking(move || ports::ensure(&table)).await?;
    if out.published != spec.ports {
        out.published = spec.ports.clone();
        ctx.step(addr, Point::VmPorts, out)?;
    }
    Ok(())
}

/// Delete the port table, recorded.
async fn unpublish(ctx: &Ctx, addr: &Address, out: &mut VmOutputs) -> Result<(), ResourceError> {
    if out.ports_table.is_none() && out.published.is_empty() {
        return Ok(());
    }
    unpublish_quietly(out).await?;
    ctx.step(addr, Point::VmPorts, out)
}

/// Delete the port table (gone already is fine); the caller records.
pub(super) async fn unpublish_quietly(out: &mut VmOutputs) -> Result<(), ResourceError> {
    if let Some(t) = out.ports_table.take() {
        blocking(move || nft::delete(&t)).await?;
    }
    out.published.clear();
    Ok(())
}

/// Is the port table as recorded? (For the VM's observe.)
pub(super) async fn observe(out: &VmOutputs) -> Result<Option<String>, ResourceError> {
    let Some(spec) = recorded_spec(out) else {
        return Ok(None);
    };
    let name = spec.name.clone();
    let got = blocking(move || nft::rule_comments(&name)).await?;
    let Some(mut got) = got else {
        return Ok(Some(format!(
            "its published-ports table {} is missing",
            spec.name
        )));
    };
    let mut want = spec.expected_rules();
    got.sort();
    want.sort();
    Ok((got != want).then(|| {
        format!(
            "its published-ports table {} was changed (rules: {}; expected {})",
            spec.name,
            if got.is_empty() {
                "none".to_string()
            } else {
                got.join(", ")
            },
            want.join(", ")
        )
    }))
}

/// The plan's lines for a VM's ports.
pub(super) fn details(spec: &VmSpec) -> Vec<String> {
    maps(&spec.ports)
        .iter()
        .map(|m| format!("publishes {}", m.describe()))
        .collect()
}

/// A port this VM would newly publish that a socket on the host already serves (the DNAT
/// would take its traffic): the refusal, naming the process where /proc says it.
pub(super) fn bound(spec: &VmSpec, recorded: Option<&Record>) -> Option<String> {
    let before: Vec<String> = recorded
        .and_then(|r| r.spec.get("ports"))
        .and_then(|p| serde_json::from_value(p.clone()).ok())
        .unwrap_or_default();
    let new: Vec<String> = spec
        .ports
        .iter()
        .filter(|p| !before.contains(p))
        .cloned()
        .collect();
    if new.is_empty() {
        return None;
    }
    let sockets = listeners::listeners();
    for m in maps(&new) {
        let Some(l) = listeners::conflict(&m, &sockets) else {
            continue;
        };
        let on = l.addr.map(|a| format!(" on {a}")).unwrap_or_default();
        let who = match listeners::holder(l.inode) {
            Some((name, pid)) => format!("by {name} (pid {pid})"),
            None => format!("(socket inode {}; its process could not be read)", l.inode),
        };
        return Some(format!(
            "port {}/{}{on} is already bound on the host {who}",
            l.port, l.proto
        ));
    }
    None
}
