//! Stopping a VM's processes: the agent's `shutdown` tool, then the virtual power button
//! (Ctrl-Alt-Del / ACPI), then SIGTERM and SIGKILL — always leaving every process gone.

use std::time::Duration;

use super::VmOutputs;
use crate::host::agent::{Client, Endpoint};
use crate::host::vmm::RunDir;

/// Ask the guest to power off, then escalate to signals; the VMM, its helper and a helper
/// started for a boot that never spawned its VMM are all gone afterwards.
pub(super) async fn stop(out: &VmOutputs) {
    if let Some(started) = out.started {
        if started.vmm.alive() {
            let ep = Endpoint::VsockUds(out.vsock_uds.clone());
            let asked = async {
                let c = Client::connect(&ep, Duration::from_secs(2)).await.ok()?;
                c.call("shutdown", serde_json::json!({})).await.ok()
            };
            let vmm = started.vmm;
            let wait = |secs| {
                tokio::task::spawn_blocking(move || vmm.wait_gone(Duration::from_secs(secs)))
            };
            let mut gone = false;
            if tokio::time::timeout(Duration::from_secs(5), asked)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                // A distro's init (systemd under TCG) stops its services first: ~10 s seen.
                gone = wait(30).await.unwrap_or(false);
            }
            // No agent (or it did not finish): Ctrl-Alt-Del / the ACPI power button.
            let poweroff = crate::host::vmm::request_poweroff(&out.run_dir);
            if !gone
                && tokio::time::timeout(Duration::from_secs(3), poweroff)
                    .await
                    .unwrap_or(false)
            {
                let _ = wait(10).await;
            }
        }
        let _ = tokio::task::spawn_blocking(move || started.kill(Duration::from_secs(5))).await;
    }
    if let Some(h) = out.helper {
        let _ = tokio::task::spawn_blocking(move || h.terminate(Duration::from_secs(2))).await;
    }
    let _ = std::fs::remove_file(RunDir(&out.run_dir).pid());
}
