//! Service mode (`--service systemd|openrc|busybox`, template `init = "distro"`): the image's
//! own init is PID 1 and the agent one of its services. It still configures the hostname,
//! network and resolv.conf from the `fort.*` kernel parameters (it starts before the distro's
//! network services), but leaves PID 1's duties — mounting, reaping, powering off — to the
//! init, and asks that init to power off when `shutdown` is called.

use std::time::Duration;

use super::log;

/// The init the agent runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitKind {
    Systemd,
    Openrc,
    Busybox,
}

impl InitKind {
    pub fn parse(s: &str) -> Option<InitKind> {
        match s {
            "systemd" => Some(InitKind::Systemd),
            "openrc" => Some(InitKind::Openrc),
            "busybox" => Some(InitKind::Busybox),
            _ => None,
        }
    }
}

/// The signal that makes PID 1 power off cleanly (stopping services first), where the init
/// has one: systemd treats SIGRTMIN+4 as `systemctl poweroff`, busybox init SIGUSR2 as
/// `poweroff`. OpenRC's openrc-init is asked with `openrc-shutdown` instead.
pub fn poweroff_signal(kind: InitKind) -> Option<i32> {
    match kind {
        InitKind::Systemd => Some(libc::SIGRTMIN() + 4),
        InitKind::Busybox => Some(libc::SIGUSR2),
        InitKind::Openrc => None,
    }
}

fn signal_init(sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) with a fixed pid and a valid signal number; no memory is involved.
    if unsafe { libc::kill(1, sig) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Ask the distro's init to power the VM off. The init stops every service (us included) and
/// powers off; the host's stop escalates to the VMM's power button and signals if it never does.
pub async fn power_off(kind: InitKind) {
    // Let the tool's answer reach the host first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    if let Some(sig) = poweroff_signal(kind) {
        match signal_init(sig) {
            Ok(()) => log(format!("asked {kind:?} (PID 1) to power off")),
            Err(e) => log(format!("cannot signal PID 1 to power off: {e}")),
        }
        return;
    }
    // openrc-init listens on its fifo for openrc-shutdown; Alpine's busybox init (which runs
    // OpenRC from inittab) takes busybox `poweroff`, which signals it SIGUSR2.
    for (cmd, args) in [
        ("openrc-shutdown", &["-p", "now"][..]),
        ("poweroff", &[][..]),
    ] {
        match tokio::process::Command::new(cmd).args(args).status().await {
            Ok(s) if s.success() => {
                log(format!("asked OpenRC to power off ({cmd})"));
                return;
            }
            Ok(s) => log(format!("{cmd} failed: {s}")),
            Err(e) => log(format!("cannot run {cmd}: {e}")),
        }
    }
    if let Err(e) = signal_init(libc::SIGUSR2) {
        log(format!("cannot signal PID 1 to power off: {e}"));
    }
}
