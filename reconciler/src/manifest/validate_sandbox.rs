//! `[sandbox.NAME]` shapes, and the `[instance]` table of each sandbox file fort wrote: where
//! it may appear, what else such a file may hold, and its times.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::UNIX_EPOCH;

use toml::Spanned;

use super::model::*;
use super::raw::*;
use super::units::{check_name, format_size, parse_size};
use super::validate::{reference, Ctx, Refs, Resolver};

use super::sandbox_limits::{
    human, parse_secs, DEFAULT_MAX_TTL, DEFAULT_TTL, MAX_NAME_WITH_NETWORK,
};

fn duration(
    cx: &mut Ctx<'_>,
    file: usize,
    addr: &str,
    field: &str,
    v: &Option<Spanned<String>>,
) -> Result<Option<u64>, ()> {
    match v {
        None => Ok(None),
        Some(s) => match parse_secs(s.get_ref()) {
            Ok(n) => Ok(Some(n)),
            Err(e) => {
                cx.err(file, &s.span(), format!("{addr}: {field}: {e}"));
                Err(())
            }
        },
    }
}

/// The `[sandbox.NAME]` shapes.
pub(super) fn shapes(r: &mut Resolver<'_, '_, '_>, refs: &Refs) -> BTreeMap<String, SandboxShape> {
    let mut out: BTreeMap<String, SandboxShape> = BTreeMap::new();
    let mut seen: BTreeMap<String, (usize, Range<usize>)> = BTreeMap::new();
    for (file, raw) in r.raws {
        for (name, value) in &raw.sandbox {
            let n = name.get_ref();
            let addr = format!("sandbox.{n}");
            if let Err(e) = check_name(n) {
                r.cx.err(*file, &name.span(), format!("{addr}: {e}"));
                continue;
            }
            if let Some((f0, s0)) = seen.get(n) {
                let a = r.cx.origin(*f0, s0);
                let b = r.cx.origin(*file, &value.span());
                r.cx.err(
                    *file,
                    &value.span(),
                    format!("{addr} is defined twice: {a} and {b}"),
                );
                continue;
            }
            seen.insert(n.clone(), (*file, value.span()));
            if let Some(s) = shape(r, *file, &addr, n, value, refs) {
                out.insert(n.clone(), s);
            }
        }
    }
    out
}

fn shape(
    r: &mut Resolver<'_, '_, '_>,
    file: usize,
    addr: &str,
    name: &str,
    value: &Spanned<super::raw_sandbox::RawSandbox>,
    refs: &Refs,
) -> Option<SandboxShape> {
    let raw = value.get_ref();
    let cx = &mut *r.cx;
    let mut ok = reference(cx, file, addr, "kernel", &raw.kernel, refs.kernels.iter());
    let (template, size) = match raw.root.get_ref() {
        RawRoot::Inline(i) => {
            ok &= reference(
                cx,
                file,
                addr,
                "template",
                &i.template,
                refs.templates.iter(),
            );
            let size = match i.size.get_ref() {
                RawSize::Bytes(b) if *b > 0 => Some(*b as u64),
                RawSize::Bytes(_) => None,
                RawSize::Text(t) => parse_size(t).ok(),
            };
            if size.is_none() {
                cx.err(
                    file,
                    &i.size.span(),
                    format!("{addr}: root: size must be a size such as \"1GiB\""),
                );
                ok = false;
            }
            (i.template.get_ref().clone(), size.unwrap_or(0))
        }
        RawRoot::Drive(_) => {
            cx.err(file, &raw.root.span(), format!("{addr}: root must be {{ template = \"…\", size = \"…\" }}: every instance gets a root drive of its own"));
            return None;
        }
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
        Some(m) => {
            let b = match m.get_ref() {
                RawSize::Bytes(b) => Ok((*b).max(0) as u64),
                RawSize::Text(t) => parse_size(t),
            };
            match b {
                Ok(b) if b >= 128 << 20 => b,
                Ok(b) => {
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
                Err(e) => {
                    cx.err(file, &m.span(), format!("{addr}: memory: {e}"));
                    ok = false;
                    0
                }
            }
        }
        None => 512 << 20,
    };
    if let Some(n) = &raw.network {
        ok &= reference(cx, file, addr, "network", n, refs.nets.keys());
        if name.len() > MAX_NAME_WITH_NETWORK {
            cx.err(file, &n.span(), format!("{addr}: its instances are named {name}-XXXX ({} characters) but a VM with a network has at most 10: use a sandbox name of at most {MAX_NAME_WITH_NETWORK} characters", name.len() + 5));
            ok = false;
        }
    }
    let ttl = duration(cx, file, addr, "ttl", &raw.ttl);
    let max_ttl = duration(cx, file, addr, "max_ttl", &raw.max_ttl);
    let idle = duration(cx, file, addr, "idle_timeout", &raw.idle_timeout);
    let (Ok(ttl), Ok(max_ttl), Ok(idle_timeout)) = (ttl, max_ttl, idle) else {
        return None;
    };
    let max_ttl = max_ttl.unwrap_or(DEFAULT_MAX_TTL);
    let ttl = ttl.unwrap_or(DEFAULT_TTL.min(max_ttl));
    if ttl > max_ttl {
        let span = raw.ttl.as_ref().map_or(value.span(), Spanned::span);
        cx.err(
            file,
            &span,
            format!(
                "{addr}: ttl ({}) is longer than max_ttl ({})",
                human(ttl),
                human(max_ttl)
            ),
        );
        ok = false;
    }
    let max_instances = match &raw.max_instances {
        Some(m) if !(1..=1000).contains(m.get_ref()) => {
            cx.err(
                file,
                &m.span(),
                format!(
                    "{addr}: max_instances must be between 1 and 1000, got {}",
                    m.get_ref()
                ),
            );
            ok = false;
            None
        }
        Some(m) => Some(*m.get_ref() as u32),
        None => None,
    };
    let vmm = match raw.vmm.as_ref().map(Spanned::get_ref) {
        Some(RawVmm::Qemu) => Vmm::Qemu,
        _ => Vmm::Firecracker,
    };
    ok.then(|| SandboxShape {
        vmm,
        kernel: raw.kernel.get_ref().clone(),
        template,
        size,
        vcpus,
        memory,
        network: raw.network.as_ref().map(|n| n.get_ref().clone()),
        ttl,
        max_ttl,
        idle_timeout,
        max_instances,
        origin: r.cx.origin(file, &value.span()),
    })
}

fn time(cx: &mut Ctx<'_>, file: usize, field: &str, v: &Spanned<String>) -> Option<u64> {
    match humantime::parse_rfc3339(v.get_ref()) {
        Ok(t) => Some(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())),
        Err(e) => {
            cx.err(file, &v.span(), format!("[instance] {field}: `{}` is not an RFC 3339 time such as \"2026-12-03T12:00:00Z\" ({e})", v.get_ref()));
            None
        }
    }
}

/// The `[instance]` tables: only in sandbox files, each with exactly one `[vm.NAME]` named
/// like the file and nothing else.
pub(super) fn instances(cx: &mut Ctx<'_>, raws: &[(usize, RawFile)]) -> BTreeMap<String, Instance> {
    let mut out = BTreeMap::new();
    for (file, raw) in raws {
        let file = *file;
        let src = cx.source(file);
        let (is_sandbox, path) = (src.sandbox, src.path.clone());
        let Some(inst) = &raw.instance else {
            if is_sandbox {
                cx.err(
                    file,
                    &(0..0),
                    "a sandbox file starts with an [instance] table (sandbox, created, expires)",
                );
            }
            continue;
        };
        if !is_sandbox {
            cx.err(file, &inst.span(), "[instance] is written by fort into sandbox files (state_dir/sandboxes/); a manifest declares shapes with [sandbox.NAME]");
            continue;
        }
        let others = raw.firecracker.len()
            + raw.kernel.len()
            + raw.rootfs.len()
            + raw.template.len()
            + raw.network.len()
            + raw.drive.len()
            + raw.sandbox.len()
            + usize::from(raw.fort.is_some());
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if others > 0 || raw.vm.len() != 1 {
            cx.err(
                file,
                &inst.span(),
                format!(
                    "a sandbox file holds [instance] and exactly one [vm.{stem}], nothing else"
                ),
            );
            continue;
        }
        let Some((name, vm)) = raw.vm.iter().next() else {
            continue;
        };
        if name.get_ref() != &stem {
            cx.err(
                file,
                &name.span(),
                format!(
                    "vm.{}: a sandbox file's VM is named like the file ({stem})",
                    name.get_ref()
                ),
            );
            continue;
        }
        if let Some(c) = &vm.get_ref().count {
            cx.err(
                file,
                &c.span(),
                format!("vm.{stem}: a sandbox is one VM: `count` cannot be set"),
            );
            continue;
        }
        let i = inst.get_ref();
        let created = time(cx, file, "created", &i.created);
        let expires = time(cx, file, "expires", &i.expires);
        let idle = duration(cx, file, "[instance]", "idle_timeout", &i.idle_timeout);
        let (Some(created), Some(expires), Ok(idle_timeout)) = (created, expires, idle) else {
            continue;
        };
        out.insert(
            stem.clone(),
            Instance {
                vm: stem,
                sandbox: i.sandbox.get_ref().clone(),
                created,
                expires,
                idle_timeout,
                file: path,
            },
        );
    }
    out
}
