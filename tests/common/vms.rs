//! Real VMs for tests: the offline assets (Debian's cloud kernel + an initrd with its virtio
//! modules, a busybox rootfs) built by `scripts/build-vm-assets`, and the VMM chosen with
//! `FORT_TEST_VMM` (`qemu`, the default, boots under TCG anywhere; `firecracker` needs KVM
//! and a vmlinux kernel).

use std::path::PathBuf;
use std::process::Command;

/// The assets directory (built once, then reused from /var/cache/fort-assets).
pub fn assets() -> PathBuf {
    let dir = std::env::var_os("FORT_TEST_ASSETS")
        .map_or_else(|| PathBuf::from("/var/cache/fort-assets"), PathBuf::from);
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/build-vm-assets"
    ))
    .arg(&dir)
    .output()
    .expect("run scripts/build-vm-assets");
    assert!(
        out.status.success(),
        "scripts/build-vm-assets failed (scripts/install-deps installs what it needs):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The kernel file for the VMM under test: Firecracker boots the ELF `vmlinux`, QEMU the
/// bzImage.
pub fn kernel_file() -> &'static str {
    if vmm() == "firecracker" {
        "vmlinux"
    } else {
        QEMU_KERNEL
    }
}

/// The kernel QEMU boots, for the tests of what only QEMU does (checkpoints,
/// the crash matrix's QMP steps), which run QEMU whatever `FORT_TEST_VMM` says.
pub const QEMU_KERNEL: &str = "vmlinuz";

pub fn vmm() -> String {
    std::env::var("FORT_TEST_VMM").unwrap_or_else(|_| "qemu".into())
}

/// VM tests boot under TCG on few cores: one at a time keeps their timing sane.
pub static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// MemTotal, as fort's messages print it.
pub fn host_memory() -> String {
    let t = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = t
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    fort::manifest::units::human_size(kib * 1024)
}

/// Processes (not zombies) whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rfind(')')
            .is_some_and(|i| stat[i + 2..].starts_with('Z'));
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !zombie && cmd.contains(needle) {
            out.push(cmd);
        }
    }
    out
}

/// Prints the VMs' console logs when the test fails (guest-side problems only show there).
pub struct ConsoleOnFailure(pub PathBuf);

impl Drop for ConsoleOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // A failed test leaves no VM behind: kill what still runs from this state dir.
        if let Some(state) = self.0.parent() {
            let needle = state.display().to_string();
            for p in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains(&needle) {
                    // SAFETY: kill(2) on processes this test started (their command line
                    // names its temporary state dir).
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
        let Ok(rd) = std::fs::read_dir(&self.0) else {
            return;
        };
        for vm in rd.flatten() {
            for f in ["console.log", "vmm.log", "vhost.log"] {
                let p = vm.path().join(f);
                if let Ok(t) = std::fs::read_to_string(&p) {
                    eprintln!("===== {} =====\n{t}", p.display());
                }
            }
        }
    }
}

/// A Debian bookworm rootfs tarball with systemd as /sbin/init (`mmdebstrap --variant=minbase
/// --include=systemd-sysv,udev`), built once by `scripts/build-debian-rootfs` and reused.
pub fn debian_rootfs() -> PathBuf {
    let dir = assets();
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/build-debian-rootfs"
    ))
    .arg(&dir)
    .output()
    .expect("run scripts/build-debian-rootfs");
    assert!(
        out.status.success(),
        "scripts/build-debian-rootfs failed (it needs mmdebstrap and deb.debian.org):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("debian-bookworm.tar")
}

/// The busybox base of the VM tests: `kernel.deb` (file://), `rootfs.bb` served by `srv`
/// (sha256 pinned), `template.base` (128 MiB) and an isolated `network.lan` on `cidr`.
pub fn busybox_base(srv: &super::server::Server, cidr: &str) -> String {
    let dir = assets();
    let rootfs = std::fs::read(dir.join("rootfs.tar.gz")).unwrap();
    let sha = super::fort::sha256_hex(&rootfs);
    srv.route("/rootfs.tar.gz", super::server::Reply::ok(rootfs));
    format!(
        "[kernel.deb]\nurl = \"file://{k}\"\ninitrd = {{ url = \"file://{i}\" }}\n\n[rootfs.bb]\nurl = \"{url}/rootfs.tar.gz\"\nsha256 = \"{sha}\"\n\n[template.base]\nrootfs = \"bb\"\nsize = \"128MiB\"\n\n[network.lan]\ncidr = \"{cidr}\"\nisolated = true\n\n",
        k = dir.join(kernel_file()).display(),
        i = dir.join("initrd.cpio.gz").display(),
        url = srv.url("").trim_end_matches('/'),
    )
}
