//! The seccomp deny-list VMM processes run under from their first instruction: syscalls no
//! VMM needs and that a compromised one would use to reach the host (mounting, tracing other
//! processes, loading kernel code, changing namespaces or the clock) fail with `EPERM`.
//! Everything else is allowed, `execve` included (the filter is installed just before it).
//! vhost-device-vsock has no sandbox of its own; QEMU adds its `-sandbox` on top once it has
//! started, Firecracker its own filters.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the VMM seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("cannot compile the VMM seccomp filter: {0}")]
    Compile(String),
    #[error("seccomp filters are built for x86_64 and aarch64 only")]
    Arch,
}

/// The denied syscalls.
pub const DENIED: &[(&str, libc::c_long)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("fsopen", libc::SYS_fsopen),
    ("fsmount", libc::SYS_fsmount),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("personality", libc::SYS_personality),
    ("quotactl", libc::SYS_quotactl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("syslog", libc::SYS_syslog),
    ("vhangup", libc::SYS_vhangup),
];

fn arch() -> Result<TargetArch, SeccompError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SeccompError::Arch)
    }
}

/// The compiled deny-list (built in the parent: compiling allocates, which a forked child
/// must not do).
pub fn deny_list() -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError::Compile(e.to_string()))
}

/// What the kernel offers (`/proc/sys/kernel/seccomp/actions_avail`), for `fort doctor`.
pub fn available() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_deny_list_builds_and_spares_what_a_vmm_needs() {
        let prog = deny_list().unwrap();
        assert!(!prog.is_empty());
        for (_, nr) in DENIED {
            assert!(![
                libc::SYS_execve,
                libc::SYS_read,
                libc::SYS_mmap,
                libc::SYS_ioctl
            ]
            .contains(nr));
        }
    }

    #[test]
    fn a_process_under_it_cannot_mount_but_runs() {
        // A child (not this test process) installs it and tries: unshare fails with EPERM,
        // getpid still works.
        let prog = deny_list().unwrap();
        // SAFETY: fork in a test; the child only makes syscalls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = seccompiler::apply_filter(&prog).is_ok()
                // SAFETY: plain syscalls on no memory of ours.
                && unsafe { libc::unshare(libc::CLONE_NEWNS) } == -1
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
                // SAFETY: as above.
                && unsafe { libc::getpid() } > 0;
            // SAFETY: leave the forked child at once, without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child we forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
