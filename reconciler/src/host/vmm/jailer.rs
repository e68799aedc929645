//! Firecracker through its jailer (Firecracker's docs/jailer.md): the chroot under the VM's
//! run dir with the kernel, initrd and drives hard-linked in, the config with paths as the
//! jailed Firecracker sees them, the jailer's command line (id, uid/gid, chroot base, the
//! cgroup on v2), and
//! the run-dir links that keep fort's paths (`vsock.sock`,
//! `api.sock`, `vmm.log`) what they are without the jailer.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Confine, RunDir, VmConfig, VmmError};

/// Where the jail of a VM lives and what goes in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// `--chroot-base-dir`: `<run dir>/jail`, so the jail goes with the run dir.
    pub base: PathBuf,
    /// `<base>/firecracker/<id>/root`: the jailed Firecracker's `/`.
    pub root: PathBuf,
    /// `--id`: `vm-NAME` (letters, digits and hyphens, as the jailer wants).
    pub id: String,
    /// `--exec-file`: `<run dir>/firecracker`, a link to the asset's binary (the jailer wants
    /// "firecracker" in the file name; cached files are named by their digest).
    pub exec_file: PathBuf,
    /// Files linked into the jail: (host path, path inside the jail).
    pub links: Vec<(PathBuf, String)>,
}

/// The jail for `cfg`.
pub fn layout(cfg: &VmConfig) -> Jail {
    let base = cfg.run_dir.join("jail");
    let id = format!("vm-{}", cfg.name);
    let root = base.join("firecracker").join(&id).join("root");
    let mut links = vec![(cfg.kernel.clone(), "/vmlinux".to_string())];
    if let Some(i) = &cfg.initrd {
        links.push((i.clone(), "/initrd".into()));
    }
    links.push((cfg.root.clone(), "/root.ext4".into()));
    for (i, d) in cfg.drives.iter().enumerate() {
        links.push((d.clone(), format!("/data{i}.ext4")));
    }
    links.push((RunDir(&cfg.run_dir).vmm_log(), "/vmm.log".into()));
    Jail {
        exec_file: cfg.run_dir.join("firecracker"),
        base,
        root,
        id,
        links,
    }
}

/// `cfg` as the jailed Firecracker sees it: every path inside the chroot.
fn jailed(cfg: &VmConfig, jail: &Jail) -> VmConfig {
    let inside = |host: &Path| -> PathBuf {
        jail.links
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, j)| PathBuf::from(j))
            .unwrap_or_else(|| host.to_path_buf())
    };
    VmConfig {
        run_dir: PathBuf::from("/"),
        kernel: inside(&cfg.kernel),
        initrd: cfg.initrd.as_deref().map(inside),
        root: inside(&cfg.root),
        drives: cfg.drives.iter().map(|d| inside(d)).collect(),
        ..cfg.clone()
    }
}

/// The `--config-file` document, with the jail's paths.
pub fn config(cfg: &VmConfig, jail: &Jail) -> Value {
    super::firecracker::config(&jailed(cfg, jail))
}

/// The jailer's arguments; Firecracker's own come after `--`, paths inside the jail.
///
/// fort has made the VM's cgroup with its limits and starts the jailer inside it (so
/// Firecracker, the same process after exec, is there from its first instruction). On cgroup
/// v2 the VM's cgroup is `fort/<state id>/vm-NAME` under the cgroup2 root, which is what the
/// jailer's `--cgroup-version 2 --parent-cgroup fort/<state id>` with `--id vm-NAME` names, so
/// the jailer is also given the limits (`--cgroup FILE=VALUE`) and writes and joins the same
/// cgroup. On v1 fort's VM cgroups go under fort's own cgroup of each controller, which may
/// differ from one controller to the next and so is not one `--parent-cgroup`: no cgroup
/// arguments then, fort's placement stands.
pub fn args(jail: &Jail, confine: &Confine) -> Vec<String> {
    let mut a = jailer_args(jail, confine);
    for s in [
        "--",
        "--config-file",
        "/config.json",
        "--api-sock",
        "/api.sock",
        "--log-path",
        "/vmm.log",
    ] {
        a.push(s.into());
    }
    a
}

/// The jailer's own arguments (everything before `--`), shared by a boot ([`args`]) and a
/// snapshot restore (`firecracker_snapshot::jailed_restore_args`).
pub(crate) fn jailer_args(jail: &Jail, confine: &Confine) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--id".into(),
        jail.id.clone(),
        "--exec-file".into(),
        jail.exec_file.display().to_string(),
        "--uid".into(),
        confine.uid.to_string(),
        "--gid".into(),
        confine.gid.to_string(),
        "--chroot-base-dir".into(),
        jail.base.display().to_string(),
    ];
    let id_suffix = format!("/{}", jail.id);
    if let (2, Some(parent)) = (
        confine.cgroup_version,
        confine.cgroup.strip_suffix(&id_suffix),
    ) {
        let l = &confine.limits;
        a.extend([
            "--cgroup-version".into(),
            "2".into(),
            "--parent-cgroup".into(),
            parent.to_string(),
        ]);
        for (file, value) in [
            ("cpu.max", format!("{} {}", l.cpu_quota_us, l.cpu_period_us)),
            ("memory.max", l.memory_bytes.to_string()),
            ("pids.max", l.pids.to_string()),
        ] {
            a.push("--cgroup".into());
            a.push(format!("{file}={value}"));
        }
    }
    a
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> VmmError + 'a {
    move |e| VmmError::io(what, path, e)
}

/// Hard-link `from` to `to`, replacing `to`; across filesystems a hard link cannot be made,
/// which for a drive is an error (a copy would not be the drive).
pub(crate) fn link(from: &Path, to: &Path) -> Result<(), VmmError> {
    match std::fs::remove_file(to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("cannot remove", to)(e))
        }
        _ => {}
    }
    std::fs::hard_link(from, to).map_err(|e| {
        if e.raw_os_error() == Some(libc::EXDEV) {
            VmmError::Unusable(format!(
                "cannot link {} into the jail at {}: they are on different filesystems (keep fort's state dir, its cache and its drives on one filesystem to use the jailer)",
                from.display(),
                to.display()
            ))
        } else {
            VmmError::io("cannot link into the jail", to, e)
        }
    })
}

pub(crate) fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), VmmError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io("cannot chown", path))
}

/// Build the jail for a boot (after [`RunDir::prepare`]): a fresh chroot with the files linked
/// in, the config written, `vmm.log` created and owned by the VM's user (Firecracker opens it
/// but does not create it), the binary linked as `<run dir>/firecracker`, and the run dir's
/// socket paths pointing into the chroot.
pub fn prepare(cfg: &VmConfig, confine: &Confine, binary: &Path) -> Result<Jail, VmmError> {
    let jail = layout(cfg);
    let run = RunDir(&cfg.run_dir);
    // What a previous boot left (links only: removing them never touches the drives).
    match std::fs::remove_dir_all(&jail.base) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("cannot clear the jail", &jail.base)(e))
        }
        _ => {}
    }
    std::fs::create_dir_all(&jail.root).map_err(io("cannot create", &jail.root))?;
    std::fs::write(run.vmm_log(), b"").map_err(io("cannot create", &run.vmm_log()))?;
    chown(&run.vmm_log(), confine.uid, confine.gid)?;
    for (host, inside) in &jail.links {
        link(host, &jail.root.join(inside.trim_start_matches('/')))?;
    }
    // Read by everyone (kernels are not secret, and the VM's user must read them); the drives
    // are the VM's own.
    for d in std::iter::once(&cfg.root).chain(&cfg.drives) {
        chown(d, confine.uid, confine.gid)?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o600))
            .map_err(io("cannot chmod", d))?;
    }
    let doc = serde_json::to_string_pretty(&config(cfg, &jail)).unwrap_or_default();
    let conf = jail.root.join("config.json");
    std::fs::write(&conf, doc).map_err(io("cannot write", &conf))?;
    match link(binary, &jail.exec_file) {
        Err(VmmError::Unusable(_)) => {
            std::fs::copy(binary, &jail.exec_file)
                .map(|_| ())
                .map_err(io("cannot copy", &jail.exec_file))?;
        }
        r => r?,
    }
    for (ours, theirs) in [(run.vsock(), "vsock.sock"), (run.api(), "api.sock")] {
        match std::fs::remove_file(&ours) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("cannot remove", &ours)(e))
            }
            _ => {}
        }
        // Relative, so a state dir that moves keeps working.
        let target = jail
            .root
            .strip_prefix(&cfg.run_dir)
            .unwrap_or(&jail.root)
            .join(theirs);
        std::os::unix::fs::symlink(target, &ours).map_err(io("cannot link", &ours))?;
    }
    Ok(jail)
}

#[cfg(test)]
#[path = "jailer_tests.rs"]
pub(crate) mod tests;
