//! `fort doctor`: what this host can do for fort, each failed check with its fix.

use serde::Serialize;

use super::{exit, session, Cli, CliError};
use crate::host::image::clone::{clone_method, Method};
use crate::host::net::{self, link::Netlink, nft};

#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

pub(super) fn check(
    name: &'static str,
    level: Level,
    detail: impl Into<String>,
    fix: Option<String>,
) -> Check {
    Check {
        name,
        level,
        detail: detail.into(),
        fix,
    }
}

/// Every check, in the order they are printed.
pub async fn checks(cli: &Cli) -> Vec<Check> {
    let mut out = Vec::new();
    let manifest = session::load_manifest(cli).ok();
    let state_dir = session::state_dir(cli, manifest.as_ref());

    out.push(match Netlink::connect() {
        Ok(nl) => match nl.links().await {
            Ok(l) => check(
                "netlink",
                Level::Ok,
                format!("route netlink works ({} interfaces)", l.len()),
                None,
            ),
            Err(e) => check(
                "netlink",
                Level::Fail,
                crate::resources::error_chain(&e),
                Some("run fort as root (it needs CAP_NET_ADMIN)".into()),
            ),
        },
        Err(e) => check(
            "netlink",
            Level::Fail,
            crate::resources::error_chain(&e),
            Some("run fort as root (it needs CAP_NET_ADMIN)".into()),
        ),
    });

    let tun = std::path::Path::new("/dev/net/tun");
    out.push(
        match std::fs::OpenOptions::new().read(true).write(true).open(tun) {
            Ok(_) => check("tun", Level::Ok, "/dev/net/tun opens (TAPs for VMs)", None),
            Err(e) => check(
                "tun",
                Level::Fail,
                format!("cannot open /dev/net/tun: {e}"),
                Some("load the tun module: modprobe tun (and run fort as root)".into()),
            ),
        },
    );

    let chains = tokio::task::spawn_blocking(nft::forward_chains).await;
    match chains {
        Ok(Ok(chains)) => {
            out.push(check("nftables", Level::Ok, "nf_tables answers over netlink", None));
            let drops: Vec<_> = chains
                .iter()
                .filter(|c| c.drop_policy && !c.table.starts_with("fort-"))
                .collect();
            if drops.is_empty() {
                out.push(check("forward policy", Level::Ok, "no other table drops forwarded traffic by policy", None));
            }
            for c in drops {
                out.push(check(
                    "forward policy",
                    Level::Fail,
                    format!(
                        "table {} {} chain {} has policy drop on the forward hook: traffic from fort's bridges is dropped there even though fort's own table accepts it (Docker and ufw do this)",
                        c.family, c.table, c.chain
                    ),
                    Some(format!(
                        "accept fort's bridges in that chain: nft insert rule {} {} {} iifname \"fort-*\" accept; nft insert rule {} {} {} oifname \"fort-*\" ct state established,related accept (Docker: add them to DOCKER-USER; ufw: ufw route allow in on fort-NET)",
                        c.family, c.table, c.chain, c.family, c.table, c.chain
                    )),
                ));
            }
        }
        Ok(Err(e)) => out.push(check("nftables", Level::Fail, crate::resources::error_chain(&e), Some("run fort as root and make sure the nf_tables module is available: modprobe nf_tables".into()))),
        Err(e) => out.push(check("nftables", Level::Fail, e.to_string(), None)),
    }

    out.push(match net::ip_forward() {
        Ok(true) => check("ip_forward", Level::Ok, "net.ipv4.ip_forward = 1", None),
        Ok(false) => check("ip_forward", Level::Warn, "net.ipv4.ip_forward = 0: fort switches it on when it applies a network (and off again when it destroys the last one it switched it on for)", Some("to switch it on now: sysctl -w net.ipv4.ip_forward=1".into())),
        Err(e) => check("ip_forward", Level::Fail, crate::resources::error_chain(&e), None),
    });

    out.extend(vmm_checks());
    out.extend(super::doctor_confine::checks(manifest.as_ref(), &state_dir));
    if let Some(m) = &manifest {
        out.extend(capacity_checks(m, &state_dir));
    }

    let drives = state_dir.join("drives");
    let (fs, method) = clone_method(&drives);
    out.push(match method {
        Method::Reflink => check("drive clones", Level::Ok, format!("reflink: {} is on {fs}, clones share the image's extents", drives.display()), None),
        _ => check("drive clones", Level::Warn, format!("sparse copy: {} is on {fs}, which cannot share extents; every drive copies its image's data", drives.display()), Some("put the state dir on btrfs or XFS (reflink=1) for instant copy-on-write clones".into())),
    });
    out
}

pub async fn doctor(cli: &Cli) -> Result<u8, CliError> {
    let checks = checks(cli).await;
    let failed = checks.iter().any(|c| c.level == Level::Fail);
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "checks": checks, "ok": !failed }))
                .unwrap_or_default()
        );
    } else {
        for c in &checks {
            let tag = match c.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            println!("{tag}  {}: {}", c.name, c.detail);
            if let Some(f) = &c.fix {
                println!("      fix: {f}");
            }
        }
    }
    Ok(if failed { exit::ERROR } else { exit::OK })
}

fn version_of(bin: &str) -> Option<String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().next().map(|l| l.trim().to_string())
}

/// VMM binaries, and what `/dev/kvm` is on this host.
fn vmm_checks() -> Vec<Check> {
    use crate::host::vmm::which;
    let mut out = Vec::new();
    let kvm = std::path::Path::new("/dev/kvm");
    let sys = |m: &str| std::path::Path::new("/sys/module").join(m).exists();
    let kind = if !kvm.exists() {
        None
    } else if sys("kvm_intel") || sys("kvm_amd") {
        Some("hardware virtualisation")
    } else if sys("kvm_pvm") {
        Some("nested PVM (kvm_pvm), which cannot run ordinary guests")
    } else {
        Some("of unknown kind")
    };
    let access = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm)
        .is_ok();
    out.push(match (kind, access) {
        (None, _) => check(
            "kvm",
            Level::Warn,
            "/dev/kvm does not exist: Firecracker cannot run; QEMU VMs run under TCG (slow)",
            Some(
                "enable virtualisation in the firmware/hypervisor and load kvm_intel or kvm_amd"
                    .into(),
            ),
        ),
        (Some(k), true) if k.starts_with("hardware") => {
            check("kvm", Level::Ok, format!("/dev/kvm: {k}, read-write"), None)
        }
        (Some(k), true) => check(
            "kvm",
            Level::Warn,
            format!("/dev/kvm: {k}: Firecracker cannot boot guests here; QEMU VMs use TCG"),
            Some("use vmm = \"qemu\" on this host".into()),
        ),
        (Some(k), false) => check(
            "kvm",
            Level::Fail,
            format!("/dev/kvm ({k}) cannot be opened read-write"),
            Some("run fort as root or add its user to the kvm group".into()),
        ),
    });
    for (bin, name, fix) in [
        ("firecracker", "firecracker", "declare a [firecracker.NAME] asset, or install firecracker into PATH (needed for vmm = \"firecracker\")"),
        ("qemu-system-x86_64", "qemu", "apt-get install qemu-system-x86 (needed for vmm = \"qemu\")"),
        ("vhost-device-vsock", "vhost-device-vsock", "cargo install vhost-device-vsock --locked (QEMU's vsock for fort)"),
    ] {
        out.push(match which(bin) {
            Some(p) => check(name, Level::Ok, format!("{} ({})", version_of(bin).unwrap_or_else(|| "version unknown".into()), p.display()), None),
            None => check(name, Level::Warn, format!("{bin} is not in PATH"), Some(fix.into())),
        });
    }
    out
}

/// The manifest's totals against what the host has free.
fn capacity_checks(m: &crate::manifest::Manifest, state_dir: &std::path::Path) -> Vec<Check> {
    use crate::manifest::Spec;
    let mut out = Vec::new();
    let mem: u64 = m
        .resources
        .values()
        .filter_map(|r| match &r.spec {
            Spec::Vm(v) => Some(v.memory),
            _ => None,
        })
        .sum();
    let disk: u64 = m
        .resources
        .values()
        .filter_map(|r| match &r.spec {
            Spec::Drive(d) => Some(d.size),
            // An "auto" size is known only once the image is built.
            Spec::Template(t) => t.size.fixed(),
            _ => None,
        })
        .sum();
    let avail = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        let l = t.lines().find(|l| l.starts_with("MemAvailable:"))?;
        l.split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    });
    if let Some(a) = avail {
        out.push(if mem <= a {
            check(
                "memory",
                Level::Ok,
                format!(
                    "the manifest's VMs need {} MiB; {} MiB available",
                    mem >> 20,
                    a >> 20
                ),
                None,
            )
        } else {
            check(
                "memory",
                Level::Warn,
                format!(
                    "the manifest's VMs need {} MiB but only {} MiB are available",
                    mem >> 20,
                    a >> 20
                ),
                Some("lower `memory` or `count`, or free memory on the host".into()),
            )
        });
    }
    let mut dir = Some(state_dir);
    while let Some(d) = dir {
        if let Ok(st) = rustix::fs::statvfs(d) {
            let free = st.f_bavail * st.f_frsize;
            out.push(if disk <= free {
                check("disk", Level::Ok, format!("drives and images at full size: {} MiB; {} MiB free at {}", disk >> 20, free >> 20, d.display()), None)
            } else {
                check("disk", Level::Warn, format!("drives and images at full size need {} MiB but {} has {} MiB free (sparse files and clones usually need far less)", disk >> 20, d.display(), free >> 20), Some("free space, or move the state dir to a bigger filesystem".into()))
            });
            break;
        }
        dir = d.parent();
    }
    out
}
