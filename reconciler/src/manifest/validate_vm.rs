//! VM validation: references, pools and their inline root drives, sizes, addresses, and the
//! interface names and address space they need.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use toml::Spanned;

use super::model::*;
use super::raw::*;
use super::units::{format_size, parse_mac, parse_size};
use super::validate::{reference, Ctx, Refs};
use crate::address::{Address, Kind};

type VmEntries<'a> = BTreeMap<String, super::validate::EntryRef<'a, RawVm>>;

pub(super) fn vms(
    cx: &mut Ctx<'_>,
    resources: &mut Vec<(Address, Resource)>,
    vms: &VmEntries<'_>,
    refs: &Refs,
) {
    let mut drive_users: BTreeMap<String, String> = BTreeMap::new();
    let mut ips: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    let mut macs: BTreeMap<String, String> = BTreeMap::new();
    // network → (VMs on it, names for the message)
    let mut usage: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
    let mut published = super::validate_ports::Published::new();

    for (name, e) in vms {
        let raw = e.raw;
        let addr = format!("vm.{name}");
        let file = e.file;
        let mut ok = true;

        let count = match &raw.count {
            Some(c) => {
                let n = *c.get_ref();
                if !(1..=1000).contains(&n) {
                    cx.err(
                        file,
                        &c.span(),
                        format!("{addr}: count must be between 1 and 1000, got {n}"),
                    );
                    continue;
                }
                Some(n as u32)
            }
            None => None,
        };
        let instances: Vec<(String, Option<PoolMember>)> = match count {
            Some(n) => (0..n)
                .map(|i| {
                    (
                        format!("{name}-{i}"),
                        Some(PoolMember {
                            pool: name.clone(),
                            index: i,
                        }),
                    )
                })
                .collect(),
            None => vec![(name.clone(), None)],
        };
        let where_span = raw
            .count
            .as_ref()
            .map_or(e.name_span.clone(), Spanned::span);
        for (inst, pool) in &instances {
            if pool.is_none() {
                continue;
            }
            if inst.len() > 31 {
                cx.err(file, &where_span, format!("{addr}: pool instance name `{inst}` is longer than 31 characters: use a shorter pool name"));
                ok = false;
                break;
            }
            if let Some((f, s)) = refs.vms.get(inst) {
                let o = cx.origin(*f, s);
                cx.err(
                    file,
                    &where_span,
                    format!("{addr}: pool instance vm.{inst} is also defined at {o}"),
                );
                ok = false;
            }
        }

        let vmm = match raw.vmm.as_ref().map(Spanned::get_ref) {
            Some(RawVmm::Qemu) => Vmm::Qemu,
            _ => Vmm::Firecracker,
        };
        let firecracker = match (&raw.firecracker, vmm) {
            (Some(f), Vmm::Qemu) => {
                cx.err(
                    file,
                    &f.span(),
                    format!("{addr}: `firecracker` only applies with vmm = \"firecracker\""),
                );
                ok = false;
                None
            }
            (Some(f), Vmm::Firecracker) => {
                ok &= reference(cx, file, &addr, "firecracker", f, refs.fcs.iter());
                Some(f.get_ref().clone())
            }
            (None, Vmm::Firecracker) if refs.fcs.len() > 1 => {
                cx.err(file, &e.name_span, format!("{addr}: several [firecracker.*] assets are declared ({}): choose one with `firecracker = \"…\"`", refs.fcs.join(", ")));
                ok = false;
                None
            }
            (None, Vmm::Firecracker) => refs.fcs.first().cloned(),
            (None, Vmm::Qemu) => None,
        };
        ok &= reference(cx, file, &addr, "kernel", &raw.kernel, refs.kernels.iter());

        let keep = match &raw.keep {
            Some(k) => {
                let n = *k.get_ref();
                if !(1..=1000).contains(&n) {
                    cx.err(
                        file,
                        &k.span(),
                        format!(
                            "{addr}: keep must be between 1 and 1000 (checkpoints kept), got {n}"
                        ),
                    );
                    ok = false;
                }
                Some(n.clamp(1, 1000) as u32)
            }
            None => None,
        };
        let vcpus = match &raw.vcpus {
            Some(v) => {
                let n = *v.get_ref();
                if !(n == 1 || ((2..=32).contains(&n) && n % 2 == 0)) {
                    cx.err(
                        file,
                        &v.span(),
                        format!("{addr}: vcpus must be 1 or an even number up to 32, got {n}"),
                    );
                    ok = false;
                }
                n.clamp(1, 32) as u32
            }
            None => 1,
        };
        let memory = match &raw.memory {
            Some(m) => match size(m) {
                Ok(b) if b < (128 << 20) => {
                    cx.err(
                        file,
                        &m.span(),
                        format!(
                            "{addr}: memory must be at least 128MiB, got {}",
                            format_size(b)
                        ),
                    );
                    ok = false;
                    0
                }
                Ok(b) => b,
                Err(err) => {
                    cx.err(file, &m.span(), format!("{addr}: memory: {err}"));
                    ok = false;
                    0
                }
            },
            None => 512 << 20,
        };

        let net = match &raw.network {
            Some(n) => {
                if reference(cx, file, &addr, "network", n, refs.nets.keys()) {
                    refs.nets.get(n.get_ref()).map(|i| (n.get_ref().clone(), i))
                } else {
                    ok = false;
                    None
                }
            }
            None => None,
        };
        let names: Vec<String> = instances.iter().map(|(n, _)| n.clone()).collect();
        let entries = raw.ports.as_deref().unwrap_or_default();
        let ports = match entries.first() {
            Some(first) if raw.network.is_none() => {
                cx.err(
                    file,
                    &first.span(),
                    format!("{addr}: `ports` needs `network`"),
                );
                None
            }
            _ => super::validate_ports::ports(
                cx,
                file,
                &addr,
                entries,
                &names,
                count.is_some(),
                &mut published,
            ),
        }
        .unwrap_or_else(|| {
            ok = false;
            Vec::new()
        });
        let ip = match &raw.ip {
            None => None,
            Some(s) => match check_ip(
                &addr,
                s.get_ref(),
                count.is_some(),
                net.as_ref().map(|(_, i)| *i),
            ) {
                Ok(ip) => {
                    if let Some(other) = ips.insert(ip, addr.clone()) {
                        cx.err(
                            file,
                            &s.span(),
                            format!("{addr}: ip {ip} is already used by {other}"),
                        );
                        ok = false;
                    }
                    Some(ip)
                }
                Err(m) => {
                    cx.err(file, &s.span(), m);
                    ok = false;
                    None
                }
            },
        };
        let mac = match &raw.mac {
            None => None,
            Some(s) if count.is_some() => {
                cx.err(
                    file,
                    &s.span(),
                    format!(
                        "{addr}: `mac` cannot be set on a pool (count): each instance gets its own"
                    ),
                );
                ok = false;
                None
            }
            Some(s) => match parse_mac(s.get_ref()) {
                Ok(m) => {
                    if let Some(other) = macs.insert(m.clone(), addr.clone()) {
                        cx.err(
                            file,
                            &s.span(),
                            format!("{addr}: mac {m} is already used by {other}"),
                        );
                        ok = false;
                    }
                    Some(m)
                }
                Err(err) => {
                    cx.err(file, &s.span(), format!("{addr}: {err}"));
                    ok = false;
                    None
                }
            },
        };

        // Root: a named drive (not for pools), or an inline one per instance.
        let inline_root = match raw.root.get_ref() {
            RawRoot::Drive(d) => {
                if count.is_some() {
                    cx.err(file, &raw.root.span(), format!("{addr}: a pool (count) needs a root drive per instance: use root = {{ template = \"…\", size = \"…\" }}"));
                    ok = false;
                } else if !refs.drives.contains_key(d) {
                    let s = Spanned::new(raw.root.span(), d.clone());
                    ok &= reference(cx, file, &addr, "drive", &s, refs.drives.keys());
                } else if let Some(user) = drive_users.insert(d.clone(), addr.clone()) {
                    cx.err(
                        file,
                        &raw.root.span(),
                        format!("{addr}: drive.{d} is already used by {user}"),
                    );
                    ok = false;
                }
                None
            }
            RawRoot::Inline(r) => {
                ok &= reference(
                    cx,
                    file,
                    &addr,
                    "template",
                    &r.template,
                    refs.templates.iter(),
                );
                match size(&r.size) {
                    Ok(b) => Some((r.template.get_ref().clone(), b)),
                    Err(err) => {
                        cx.err(file, &r.size.span(), format!("{addr}: root size: {err}"));
                        ok = false;
                        None
                    }
                }
            }
        };
        let mut data: Vec<String> = Vec::new();
        let listed = raw.drives.as_deref().unwrap_or_default();
        for entry in listed {
            let name = entry.get_ref().name();
            // Listed twice in this VM: validate_mounts says so.
            if data.iter().any(|d| d == name) {
                continue;
            }
            let d = match entry.get_ref() {
                RawDataDrive::Name(n) => Spanned::new(entry.span(), n.clone()),
                RawDataDrive::Mounted(m) => m.drive.clone(),
            };
            if !reference(cx, file, &addr, "drive", &d, refs.drives.keys()) {
                ok = false;
                continue;
            }
            if count.is_some() {
                cx.err(file, &d.span(), format!("{addr}: drive.{name} cannot be attached to a pool: every instance would share it"));
                ok = false;
                continue;
            }
            if let Some(user) = drive_users.insert(name.to_string(), addr.clone()) {
                cx.err(
                    file,
                    &d.span(),
                    format!("{addr}: drive.{name} is already used by {user}"),
                );
                ok = false;
            }
            data.push(name.to_string());
        }
        let mounts = super::validate_mounts::mounts(cx, file, &addr, listed);
        ok &= mounts.is_some();
        let mounts = mounts.unwrap_or_default();

        // Every instance whose TAP name does not fit, so one edit fixes them all.
        if net.is_some() {
            for (inst, _) in &instances {
                let tap = format!("fort-{inst}");
                if tap.len() > 15 {
                    cx.err(file, &where_span, format!("vm.{inst}: its TAP would be named `{tap}` ({} bytes) but Linux interface names have at most 15: use a VM name of at most 10 characters (including a pool's -N suffix)", tap.len()));
                    ok = false;
                }
            }
        }
        for (inst, _) in &instances {
            if let Some((net_name, _)) = &net {
                let tap = format!("fort-{inst}");
                if let Some((other, _)) = refs.nets.iter().find(|(_, n)| n.bridge == tap) {
                    cx.err(file, &where_span, format!("vm.{inst} and network.{other} would both use the interface name `{tap}`: rename one"));
                    ok = false;
                }
                usage
                    .entry(net_name.clone())
                    .or_default()
                    .push((addr.clone(), 1));
            }
            if inline_root.is_some() {
                let drive = format!("{inst}-root");
                if let Some((f, s)) = refs.drives.get(&drive) {
                    let o = cx.origin(*f, s);
                    cx.err(
                        file,
                        &raw.root.span(),
                        format!("vm.{inst}: its inline root drive.{drive} is also defined at {o}"),
                    );
                    ok = false;
                }
                if drive.len() > 31 {
                    cx.err(file, &raw.root.span(), format!("vm.{inst}: its inline root drive name `{drive}` is longer than 31 characters"));
                    ok = false;
                }
            }
        }
        if !ok {
            continue;
        }
        // Which VMs of a warm template start warm, and why the others boot (the plan says so).
        let (warm, not_warm) = match inline_root.as_ref().map(|(t, _)| t) {
            Some(t) if refs.warm.contains(t) => match warm_refusal(
                t,
                vmm,
                firecracker
                    .as_deref()
                    .map(|f| (f, refs.jailed_fcs.iter().any(|j| j == f))),
                !data.is_empty(),
            ) {
                Some(why) => (None, Some(why)),
                None => (Some(t.clone()), None),
            },
            _ => (None, None),
        };

        let origin = cx.origin(file, &e.span);
        for (i, (inst, pool)) in instances.into_iter().enumerate() {
            let root = match &inline_root {
                Some((template, size)) => {
                    let drive = format!("{inst}-root");
                    let daddr = Address::new(Kind::Drive, &drive);
                    resources.push((
                        daddr.clone(),
                        Resource::new(
                            daddr,
                            origin.clone(),
                            Spec::Drive(DriveSpec {
                                template: Some(template.clone()),
                                size: *size,
                                protect: false,
                                pool: count.map(|_| name.clone()),
                                sandbox: refs.sandbox_vms.get(name).cloned(),
                            }),
                            vec![Address::new(Kind::Template, template)],
                        ),
                    ));
                    drive
                }
                None => match raw.root.get_ref() {
                    RawRoot::Drive(d) => d.clone(),
                    RawRoot::Inline(_) => continue,
                },
            };
            let mut deps = vec![
                Address::new(Kind::Kernel, raw.kernel.get_ref()),
                Address::new(Kind::Drive, &root),
            ];
            deps.extend(data.iter().map(|d| Address::new(Kind::Drive, d)));
            if let Some((n, _)) = &net {
                deps.push(Address::new(Kind::Network, n));
            }
            if let Some(f) = &firecracker {
                deps.push(Address::new(Kind::Firecracker, f));
            }
            deps.sort();
            deps.dedup();
            let spec = Spec::Vm(VmSpec {
                vmm,
                firecracker: firecracker.clone(),
                kernel: raw.kernel.get_ref().clone(),
                root,
                drives: data.clone(),
                mounts: mounts.clone(),
                vcpus,
                memory,
                network: net.as_ref().map(|(n, _)| n.clone()),
                ip,
                mac: mac.clone(),
                tap: net.as_ref().map(|_| format!("fort-{inst}")),
                state: match raw.state {
                    Some(RawVmState::Stopped) => VmState::Stopped,
                    Some(RawVmState::Paused) => VmState::Paused,
                    Some(RawVmState::Suspended) => VmState::Suspended,
                    Some(RawVmState::Running) | None => VmState::Running,
                },
                restart: match raw.restart {
                    Some(RawRestart::Always) => RestartPolicy::Always,
                    Some(RawRestart::Never) => RestartPolicy::Never,
                    _ => RestartPolicy::OnFailure,
                },
                pool,
                ports: ports.get(i).cloned().unwrap_or_default(),
                warm: warm.clone(),
                not_warm: not_warm.clone(),
                keep,
                sandbox: refs.sandbox_vms.get(name).cloned(),
            });
            let address = Address::new(Kind::Vm, &inst);
            resources.push((
                address.clone(),
                Resource::new(address, origin.clone(), spec, deps),
            ));
        }
    }

    for (net_name, users) in usage {
        let Some(info) = refs.nets.get(&net_name) else {
            continue;
        };
        let used: usize = users.iter().map(|(_, n)| n).sum();
        let room = (1u64 << (32 - info.net.prefix_len())) - 3;
        if used as u64 > room {
            let mut per: BTreeMap<&str, usize> = BTreeMap::new();
            for (a, n) in &users {
                *per.entry(a.as_str()).or_default() += n;
            }
            let who: Vec<String> = per
                .iter()
                .map(|(a, n)| {
                    if *n > 1 {
                        format!("{a} ×{n}")
                    } else {
                        (*a).to_string()
                    }
                })
                .collect();
            cx.err(
                info.file,
                &info.cidr_span,
                format!(
                    "network.{net_name}: {} has room for {room} VMs but {used} are attached ({})",
                    info.net,
                    who.join(", ")
                ),
            );
        }
    }
}

fn size(s: &Spanned<RawSize>) -> Result<u64, String> {
    match s.get_ref() {
        RawSize::Bytes(b) if *b > 0 => Ok(*b as u64),
        RawSize::Bytes(_) => Err("size must be greater than 0".to_string()),
        RawSize::Text(t) => parse_size(t),
    }
}

fn check_ip(
    addr: &str,
    s: &str,
    pool: bool,
    net: Option<&super::validate_network::NetInfo>,
) -> Result<Ipv4Addr, String> {
    if pool {
        return Err(format!(
            "{addr}: `ip` cannot be set on a pool (count): addresses are allocated per instance"
        ));
    }
    let Some(info) = net else {
        return Err(format!("{addr}: `ip` needs `network`"));
    };
    let ip: Ipv4Addr = s.parse().map_err(|_| {
        format!("{addr}: invalid ip `{s}`: expected an IPv4 address such as \"10.77.0.10\"")
    })?;
    if !info.net.contains(&ip) {
        return Err(format!(
            "{addr}: ip {ip} is outside the network {}",
            info.net
        ));
    }
    if ip == info.net.network() || ip == info.net.broadcast() {
        return Err(format!(
            "{addr}: ip {ip} is the network's {} address",
            if ip == info.net.network() {
                "network"
            } else {
                "broadcast"
            }
        ));
    }
    if ip == info.gateway {
        return Err(format!(
            "{addr}: ip {ip} is the network's gateway (the bridge)"
        ));
    }
    Ok(ip)
}

/// Why a VM whose root is inline from the warm template `template` boots instead of starting
/// warm (`None`: it starts warm).
/// Why a VM of the warm template `template` boots instead (`None`: it starts warm). A
/// Firecracker VM starts warm only through the jailer: a Firecracker snapshot reopens the
/// drive and vsock paths it was made with, which only each VM's own chroot makes the clone's
/// own. `firecracker` is the VM's asset and whether it has a jailer (`None`: PATH).
fn warm_refusal(
    template: &str,
    vmm: Vmm,
    firecracker: Option<(&str, bool)>,
    data_drives: bool,
) -> Option<String> {
    if vmm == Vmm::Firecracker {
        let unjailed = match firecracker {
            Some((_, true)) => None,
            Some((name, false)) => Some(format!("firecracker.{name} has no jailer_member")),
            None => Some("its firecracker comes from PATH".to_string()),
        };
        if let Some(what) = unjailed {
            return Some(format!("boots: template.{template} is warm, but a Firecracker VM starts warm only through the jailer and {what} (a snapshot reopens the drive and vsock paths it was made with, and only each VM's own chroot makes them the clone's own)"));
        }
    }
    if data_drives {
        return Some(format!("boots: template.{template} is warm, but a VM with data drives does not start warm (the template's snapshot has none)"));
    }
    None
}
