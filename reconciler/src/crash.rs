//! Crash points: every step boundary of every kind's apply and destroy, and of the executor,
//! named in one list. In debug builds (tests), `FORT_CRASH_AT=NAME` makes fort SIGKILL itself
//! the first time it reaches that point, so a test can prove that a crash there converges.
//! Release builds compile the check out entirely.
//!
//! The list is the crash matrix: `tests/crash.rs` walks [`Point::ALL`], and a test checks that
//! docs/reliability.md describes every point, so a new step without a case fails the build.

macro_rules! crash_points {
    ($($id:ident = $name:literal : $doc:literal,)*) => {
        /// One place where a crash is survivable by design.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Point {
            $($id,)*
        }

        impl Point {
            /// Every point, in the order an apply reaches them.
            pub const ALL: &'static [Point] = &[$(Point::$id,)*];

            /// The name `FORT_CRASH_AT` takes (`vm.spawned`).
            pub fn name(self) -> &'static str {
                match self {
                    $(Point::$id => $name,)*
                }
            }

            /// What has happened, and what is recorded, when a crash hits here.
            pub fn doc(self) -> &'static str {
                match self {
                    $(Point::$id => $doc,)*
                }
            }
        }
    };
}

crash_points! {
    ActionIntent = "action.intent":
        "the action's intent is recorded (status pending); nothing is done yet",
    FetchPartial = "fetch.partial":
        "mid-download: part of the body is in cache/tmp, nothing is in the cache",
    TemplateUnpacked = "template.unpacked":
        "the rootfs is unpacked in images/tmp/KEY; no image yet",
    TemplateMke2fs = "template.mke2fs":
        "mid-mke2fs: mke2fs is writing images/tmp/KEY.ext4.part",
    NetworkIntent = "network.intent":
        "the bridge and table names are chosen, not yet recorded; nothing is created",
    NetworkBridge = "network.bridge":
        "the bridge exists (marked with fort's alias); not recorded",
    NetworkNft = "network.nft":
        "the bridge has its address and the nftables table exists; not recorded",
    NetworkForward = "network.forward":
        "fort switched net.ipv4.ip_forward on (recorded before it did)",
    DriveIntent = "drive.intent":
        "the drive's path is chosen, not yet recorded; no file yet",
    DriveCloned = "drive.cloned":
        "mid-clone: the template image is cloned to DRIVE.ext4.part, not grown or installed",
    DriveFormatted = "drive.formatted":
        "an empty drive's DRIVE.ext4.part is formatted, not installed",
    DriveResizing = "drive.resizing":
        "mid-resize: an existing drive's file is longer, its filesystem not yet grown",
    VmIntent = "vm.intent":
        "the VM's run dir, CID and TAP name are chosen, not yet recorded; nothing is created",
    VmStopped = "vm.stopped":
        "the VM's previous processes are stopped; not recorded",
    VmAttached = "vm.attached":
        "the lease is taken and the TAP is on the bridge; the attachment is not recorded",
    VmPorts = "vm.ports":
        "the VM's published-ports table is in place (or deleted); the ports it publishes are not recorded",
    VmConfined = "vm.confined":
        "the VM's uid is allocated, its cgroup made with its limits, its run dir and drives given to the uid; not recorded",
    VmHelper = "vm.helper":
        "vhost-device-vsock runs; its PID is not recorded",
    VmSpawned = "vm.spawned":
        "the VMM runs; its PID is not recorded and the guest is booting",
    VmPaused = "vm.paused":
        "the VM's vCPUs are stopped (or running again); not recorded",
    VmSnapshotIntent = "vm.snapshot-intent":
        "a suspend's temporary snapshot directory is named (or an interrupted one cleared); not recorded",
    VmSnapshotWritten = "vm.snapshot-written":
        "the snapshot is complete in snapshots/NAME/suspend (or deleted); not recorded, the VMM still runs",
    VmResuming = "vm.resuming":
        "the snapshot is loaded and recorded as used; the guest has not run yet",
    ReplaceDestroyed = "replace.destroyed":
        "a replace's destroy half is done; the resource is gone from the host, its row not cleared",
    ActionDone = "action.done":
        "the action finished on the host; its result is not recorded",
    VmDestroyStopped = "vm.destroy-stopped":
        "destroy: the VM's processes are stopped; TAP, lease and run dir remain",
    VmDetached = "vm.detached":
        "the TAP is deleted and the lease released (destroy, or a first boot that failed); not recorded",
    VmUnconfined = "vm.unconfined":
        "destroy: the VM's cgroup is removed and its drives are root's again; its uid and run dir remain",
    NetworkUnfiltered = "network.unfiltered":
        "destroy: the nftables table is deleted; the bridge remains",
    OrphansRemoved = "orphans.removed":
        "the first leftover of an earlier run is removed; others remain",
}

/// The name `FORT_CRASH_AT` asks for, read once.
#[cfg(debug_assertions)]
fn armed() -> Option<&'static str> {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ARMED
        .get_or_init(|| {
            std::env::var("FORT_CRASH_AT")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .as_deref()
}

/// A step boundary: when `FORT_CRASH_AT` names it (debug builds only), fort dies here as a
/// `kill -9` would kill it — no destructors, no flushing, children left running.
#[inline]
pub fn hit(point: Point) {
    #[cfg(debug_assertions)]
    if armed() == Some(point.name()) {
        eprintln!("fort: FORT_CRASH_AT={}: killing myself", point.name());
        // SAFETY: kill(2) of our own process; nothing is shared with other processes.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_dotted() {
        let mut seen = std::collections::BTreeSet::new();
        for p in Point::ALL {
            assert!(seen.insert(p.name()), "{} twice", p.name());
            assert!(p.name().contains('.'), "{}", p.name());
            assert!(!p.doc().is_empty());
        }
    }

    #[test]
    fn reliability_doc_lists_every_point() {
        let doc = include_str!("../../docs/reliability.md");
        for p in Point::ALL {
            assert!(
                doc.contains(&format!("`{}`", p.name())),
                "docs/reliability.md does not describe crash point `{}`",
                p.name()
            );
        }
    }
}
