//! What a restored guest is told before it counts as ready (`fort/identity`): the host's
//! time (its clock is the snapshot's), fresh entropy (its RNG state is another boot's) and,
//! for a warm clone, its own hostname, network and machine-id.

use std::time::Duration;

use super::VmOutputs;
use crate::address::Address;
use crate::host::agent::{Client, Endpoint};

/// After a restore: the agent steps the clock to the host's and reseeds its RNG. Best
/// effort: a guest that cannot do it is named in a warning, and keeps running. `client` is
/// the connection the readiness wait made, if it is at hand (a new one costs a vsock
/// handshake and an `initialize`).
pub(super) async fn after_restore(addr: &Address, out: &VmOutputs, client: Option<Client>) {
    identify(addr, out, serde_json::json!({}), client).await;
}

/// `fort/identity` with the host's time, fresh entropy and `extra` (a clone's hostname,
/// network and machine-id), on `client` or a new connection.
pub(super) async fn identify(
    addr: &Address,
    out: &VmOutputs,
    extra: serde_json::Value,
    client: Option<Client>,
) {
    use base64::Engine;
    let mut entropy = [0u8; 64];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut entropy);
    }
    let ep = Endpoint::VsockUds(out.vsock_uds.clone());
    let asked = async {
        let c = match client {
            Some(c) => c,
            None => Client::connect(&ep, Duration::from_secs(5)).await.ok()?,
        };
        // The time is read last, just before it is sent.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut args = serde_json::json!({
            "time_unix_ns": now,
            "entropy": base64::engine::general_purpose::STANDARD.encode(entropy),
        });
        if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
            a.extend(e.clone());
        }
        c.request("fort/identity", args).await.ok()
    };
    match tokio::time::timeout(Duration::from_secs(10), asked).await {
        Ok(Some(r)) => {
            tracing::info!("{addr}: restored; the guest's clock was stepped: {r}");
            if let Some(errs) = r.get("errors").and_then(|e| e.as_array()) {
                for e in errs {
                    tracing::warn!("{addr}: after the restore: {e}");
                }
            }
        }
        _ => tracing::warn!(
            "{addr}: the agent did not take the host's time after the restore: the guest's clock is the snapshot's"
        ),
    }
}
