//! A running VM's vCPUs, under whichever VMM runs it (`VmOutputs::vmm`): stopped and
//! continued — QEMU's QMP `stop`/`cont`, Firecracker's `PATCH /vm` Paused/Resumed — and
//! observed: QMP `query-status`, Firecracker's `GET /` (swagger `InstanceInfo.state`).

use super::super::{blocking, error_chain, ResourceError};
use super::VmOutputs;
use crate::host::vmm::firecracker_snapshot as fc;
use crate::host::vmm::firecracker_suspend::CALL_TIMEOUT;
use crate::host::vmm::{qemu_snapshot, qmp, RunDir};

fn firecracker(out: &VmOutputs) -> bool {
    out.vmm == "firecracker"
}

/// Are the VM's vCPUs stopped: paused by fort, or (QEMU) loaded from a snapshot and not yet
/// continued? A VMM that does not answer counts as running: whether its process lives is
/// observed on its own.
pub(super) async fn stopped(out: &VmOutputs) -> bool {
    let run = out.run_dir.clone();
    if firecracker(out) {
        // "Not started" is a Firecracker that never ran a guest (a restore that did not
        // load): nothing to continue.
        return fc::instance_state(&RunDir(&run).api(), CALL_TIMEOUT)
            .await
            .is_ok_and(|s| s == "Paused");
    }
    tokio::task::spawn_blocking(move || qmp::status(&run))
        .await
        .ok()
        .flatten()
        .is_some_and(|s| s == "paused" || s == "prelaunch")
}

fn check(e: crate::host::vmm::VmmError) -> ResourceError {
    ResourceError::Check(error_chain(&e))
}

/// Stop the vCPUs (memory kept, the same process).
pub(super) async fn pause(out: &VmOutputs) -> Result<(), ResourceError> {
    let run = out.run_dir.clone();
    if firecracker(out) {
        return fc::call(&RunDir(&run).api(), &fc::pause(), CALL_TIMEOUT)
            .await
            .map_err(check);
    }
    blocking(move || qemu_snapshot::pause(&run)).await
}

/// Let stopped vCPUs run again.
pub(super) async fn resume(out: &VmOutputs) -> Result<(), ResourceError> {
    let run = out.run_dir.clone();
    if firecracker(out) {
        return fc::call(&RunDir(&run).api(), &fc::resume(), CALL_TIMEOUT)
            .await
            .map_err(check);
    }
    blocking(move || qemu_snapshot::resume(&run)).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::host::vmm::firecracker_snapshot::tests::{instance, serve, NO_CONTENT};

    /// A Firecracker VM's vCPUs as `GET /` reports them, and the requests that stop and
    /// continue them, against the stand-in API server.
    #[tokio::test]
    async fn a_firecracker_vm_is_stopped_when_it_says_paused() {
        let t = tempfile::tempdir().unwrap();
        let out: VmOutputs = serde_json::from_value(serde_json::json!({
            "vmm": "firecracker",
            "run_dir": t.path(),
            "vsock_uds": t.path().join("vsock.sock"),
            "console_log": t.path().join("console.log"),
            "cid": 3,
        }))
        .unwrap();
        // No Firecracker at all: running, as far as the vCPUs go.
        assert!(!stopped(&out).await);
        let server = serve(
            &RunDir(t.path()).api(),
            vec![
                Some(instance("Paused")),
                Some(instance("Running")),
                Some(instance("Not started")),
                Some(NO_CONTENT),
                Some(NO_CONTENT),
            ],
        )
        .await;
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(stopped(&out).await);
        }
        assert_eq!(seen, [true, false, false]);
        pause(&out).await.unwrap();
        resume(&out).await.unwrap();
        let reqs = server.await.unwrap();
        let bodies: Vec<&str> = reqs
            .iter()
            .map(|r| r.split_once("\r\n\r\n").unwrap().1)
            .collect();
        assert_eq!(
            bodies,
            [
                "",
                "",
                "",
                r#"{"state":"Paused"}"#,
                r#"{"state":"Resumed"}"#
            ]
        );
        assert!(reqs[3].starts_with("PATCH /vm HTTP/1.1\r\n"));
    }
}
