//! PID 1 duties inside a fort VM: mount the basic filesystems and the data drives, set the hostname, configure
//! `lo`/`eth0`, the default route and `/etc/resolv.conf` from `fort.*` kernel parameters, reap
//! orphaned zombies, and power off cleanly on SIGINT/SIGTERM (Ctrl-Alt-Del) or `shutdown`.
//! Under a distro's init (`service`) only the configuration part applies.
//!
//! A PID 1 that exits panics the kernel, so nothing here exits: failures are logged and the
//! agent keeps serving.

pub mod mounts;
pub(crate) mod net;
pub mod service;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use rustix::mount::{mount, MountFlags};

/// Children spawned by `run_command`, which tokio waits for itself; the reaper leaves them alone.
pub static OWN_CHILDREN: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

pub fn is_pid1() -> bool {
    std::process::id() == 1
}

fn log(msg: impl std::fmt::Display) {
    // The console (ttyS0) is the only log a guest has; the host keeps it in console.log.
    eprintln!("fort-guest-agent: {msg}");
}

/// The `fort.*` kernel parameters (documented in docs/guest-agent.md).
#[derive(Debug, Default, PartialEq)]
pub struct Params {
    pub hostname: Option<String>,
    /// `fort.ip=10.77.0.2/24`
    pub ip: Option<(std::net::Ipv4Addr, u8)>,
    /// `fort.gw=10.77.0.1`
    pub gateway: Option<std::net::Ipv4Addr>,
    /// `fort.dns=1.1.1.1,8.8.8.8`
    pub dns: Vec<std::net::IpAddr>,
    /// `fort.mount=DRIVE:SERIAL:DEVICE:PATH[:OPTIONS]`, one per mounted data drive.
    pub mounts: Vec<mounts::MountParam>,
    /// `fort.mount=` values that do not parse (reported like failed mounts, not dropped).
    pub bad_mounts: Vec<(String, String)>,
}

impl Params {
    pub fn parse(cmdline: &str) -> Params {
        let mut p = Params::default();
        for word in cmdline.split_whitespace() {
            let Some((k, v)) = word.split_once('=') else {
                continue;
            };
            match k {
                "fort.hostname" => p.hostname = Some(v.to_string()),
                "fort.ip" => {
                    let (a, len) = v.split_once('/').unwrap_or((v, "24"));
                    match (a.parse(), len.parse::<u8>()) {
                        (Ok(a), Ok(l)) if l <= 32 => p.ip = Some((a, l)),
                        _ => log(format!("ignoring bad fort.ip={v}")),
                    }
                }
                "fort.gw" => match v.parse() {
                    Ok(g) => p.gateway = Some(g),
                    Err(_) => log(format!("ignoring bad fort.gw={v}")),
                },
                "fort.mount" => match mounts::MountParam::parse(v) {
                    Ok(m) => p.mounts.push(m),
                    Err(e) => p.bad_mounts.push((v.to_string(), e)),
                },
                "fort.dns" => {
                    for s in v.split(',').filter(|s| !s.is_empty()) {
                        match s.parse() {
                            Ok(a) => p.dns.push(a),
                            Err(_) => log(format!("ignoring bad fort.dns entry {s}")),
                        }
                    }
                }
                _ => {}
            }
        }
        p
    }
}

/// Boot-time setup as PID 1, before the listeners start.
pub fn boot() {
    mount_basics();
    // Ctrl-Alt-Del (Firecracker's SendCtrlAltDel) then sends SIGINT to us instead of rebooting.
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::CadOff) {
        log(format!("cannot route Ctrl-Alt-Del to init: {e}"));
    }
    configure(None);
    if let Ok(mut g) = OWN_CHILDREN.lock() {
        *g = Some(HashSet::new());
    }
}

/// Hostname, network and resolv.conf from the `fort.*` kernel parameters: what PID 1 does at
/// boot, and what the agent does first as a distro's service (before its network services).
/// Mounted drives too; a distro's service also records them in `fstab` (`/etc/fstab`).
pub fn configure(fstab: Option<&std::path::Path>) {
    let cmdline = std::env::var("FORT_AGENT_CMDLINE")
        .or_else(|_| std::fs::read_to_string("/proc/cmdline"))
        .unwrap_or_default();
    let params = Params::parse(&cmdline);
    if let Some(h) = &params.hostname {
        if let Err(e) = rustix::system::sethostname(h.as_bytes()) {
            log(format!("cannot set hostname {h}: {e}"));
        }
    }
    net::configure(&params);
    // Before the listeners: the first `initialize` already carries the mount reports.
    mounts::mount_all(&params, fstab);
    if !params.dns.is_empty() {
        if let Err(e) = write_resolv_conf(std::path::Path::new("/"), &params.dns) {
            log(format!("cannot write /etc/resolv.conf: {e}"));
        }
    }
}

/// Write `root`/etc/resolv.conf naming `dns` (at boot and for `fort/identity`).
pub(crate) fn write_resolv_conf(
    root: &std::path::Path,
    dns: &[std::net::IpAddr],
) -> std::io::Result<()> {
    let text: String = dns.iter().map(|a| format!("nameserver {a}\n")).collect();
    let etc = root.join("etc");
    let _ = std::fs::create_dir_all(&etc);
    let path = etc.join("resolv.conf");
    // A distro's resolv.conf may be a link into /run (systemd-resolved, resolvconf) that
    // does not exist yet: fort's servers replace it with a plain file.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        let _ = std::fs::remove_file(&path);
    }
    std::fs::write(&path, text)
}

fn mount_basics() {
    let table: &[(&str, &str, &str, MountFlags, &str)] = &[
        (
            "proc",
            "/proc",
            "proc",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            "",
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            "",
        ),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MountFlags::NOSUID,
            "mode=0755",
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            "mode=0620,ptmxmode=0666",
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            "mode=0755",
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            "mode=1777",
        ),
    ];
    for (src, target, fstype, flags, data) in table {
        let _ = std::fs::create_dir_all(target);
        match mount(*src, *target, *fstype, *flags, *data) {
            Ok(()) => {}
            // An initramfs may already have mounted (and moved) some of these.
            Err(rustix::io::Errno::BUSY) => {}
            Err(e) => log(format!("cannot mount {fstype} on {target}: {e}")),
        }
    }
}

/// Reap orphans that were re-parented to us (not our own run_command children, which tokio
/// waits for), so no zombies pile up.
fn reap_orphans() {
    let Ok(own) = OWN_CHILDREN.lock() else { return };
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if own.as_ref().is_some_and(|o| o.contains(&pid)) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may contain spaces) start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next(), f.next());
        if state == Some("Z") && ppid == Some("1") {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
            }
        }
    }
}

/// Serve as init: reap, and power off on a signal or `shutdown`. Never returns.
pub async fn serve_as_init() -> ! {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async {
        let mut chld = signal(SignalKind::child()).ok();
        loop {
            match chld.as_mut() {
                Some(s) => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), s.recv()).await;
                }
                None => tokio::time::sleep(Duration::from_secs(1)).await,
            }
            reap_orphans();
        }
    });
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    tokio::select! {
        _ = recv(&mut term) => log("SIGTERM: powering off"),
        _ = recv(&mut int) => log("SIGINT (Ctrl-Alt-Del): powering off"),
        _ = crate::tools::SHUTDOWN.notified() => {
            log("shutdown requested: powering off");
            // Let the tool's answer reach the host first.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    power_off().await
}

async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

async fn power_off() -> ! {
    use rustix::process::{kill_process, Signal};
    // Pid -1: every process but us.
    let all = rustix::process::Pid::from_raw(-1);
    let signal_all = |sig| {
        if let Some(p) = all {
            let _ = kill_process(p, sig);
        }
    };
    signal_all(Signal::Term);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        reap_all();
        if only_us_left() {
            break;
        }
    }
    signal_all(Signal::Kill);
    reap_all();
    rustix::fs::sync();
    unmount_all();
    rustix::fs::sync();
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::PowerOff) {
        log(format!("power off failed: {e}"));
    }
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

fn reap_all() {
    while let Ok(Some(_)) = rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG) {}
}

fn only_us_left() -> bool {
    std::fs::read_dir("/proc").map_or(true, |rd| {
        rd.flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
            .all(|pid| pid == 1 || is_kernel_thread(pid))
    })
}

fn is_kernel_thread(pid: u32) -> bool {
    // Kernel threads have an empty cmdline and are children of kthreadd (pid 2) or pid 2 itself.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().nth(1).map(str::to_string))
        })
        .flatten()
        .is_some_and(|ppid| ppid == "2" || ppid == "0")
}

fn unmount_all() {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let targets: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    for t in targets.iter().rev() {
        if t == "/" {
            continue;
        }
        let _ = rustix::mount::unmount(t.as_str(), rustix::mount::UnmountFlags::DETACH);
    }
    // The root cannot be unmounted: make it read-only so the journal is clean.
    let _ = rustix::mount::mount_remount("/", MountFlags::RDONLY, "");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_parameters() {
        let p = Params::parse("console=ttyS0 reboot=k panic=1 fort.hostname=agent1 fort.ip=10.77.0.2/24 fort.gw=10.77.0.1 fort.dns=1.1.1.1,9.9.9.9 root=/dev/vda");
        assert_eq!(p.hostname.as_deref(), Some("agent1"));
        assert_eq!(
            p.ip,
            Some((
                "10.77.0.2"
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                24
            ))
        );
        assert_eq!(
            p.gateway.map(|g| g.to_string()).as_deref(),
            Some("10.77.0.1")
        );
        assert_eq!(p.dns.len(), 2);
        let m = Params::parse(
            "fort.mount=data:fort-data:vdb:/data:ro fort.mount=bad fort.mount=s:fort-s:vdc:/srv",
        );
        let paths: Vec<&str> = m.mounts.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(paths, ["/data", "/srv"]);
        assert_eq!(m.bad_mounts.len(), 1);
        assert_eq!(
            Params::parse("fort.ip=nonsense fort.gw=x"),
            Params::default()
        );
    }
}
