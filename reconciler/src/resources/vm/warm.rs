//! Warm start (`[template.T] warm = true`): a new VM of T is restored from a snapshot of one
//! booted VM of T instead of booting, then given its own identity. The snapshot
//! (`host::warm`) is made the first time a VM of that template and shape starts: that VM's
//! own processes (its uid, its cgroup) boot a builder — the template's image cloned into the
//! snapshot's temporary directory, a NIC on no network, no data drives — wait for its agent,
//! save it, and end. Every VM then gets the builder's root image by reflink over its fresh
//! root drive, its own TAP, vsock device (CID) and, through the agent, hostname, MAC and
//! address, machine-id, clock and entropy.
//!
//! Only a VM's first start is warm: after that its root drive holds what it wrote, and it
//! boots from it like any VM.

use std::path::Path;

use serde_json::{json, Value};

use super::super::drive::DriveOutputs;
use super::super::template::TemplateOutputs;
use super::super::{blocking, Ctx, ResourceError};
use super::{confine, steps, VmOutputs};
use crate::address::{Address, Kind};
use crate::crash::Point;
use crate::host::image::clone;
use crate::host::snapshot::{self, Meta};
use crate::host::vmm::qemu::Qemu;
use crate::host::vmm::{qemu, qemu_snapshot, NetConfig, RunDir, Started, Vmm as _};
use crate::host::warm;
use crate::manifest::{Resource, VmSpec};

/// The builder's MAC: every clone replaces it with its own.
const BUILDER_MAC: &str = "02:fc:ff:ff:ff:01";
const BUILDER_HOSTNAME: &str = "fort-warm";

fn err(e: impl std::error::Error + 'static) -> ResourceError {
    ResourceError::Check(super::super::error_chain(&e))
}

/// What the warm snapshot of `template` for this VM's shape is made of (its key's input).
fn inputs(
    ctx: &Ctx,
    spec: &VmSpec,
    template: &str,
) -> Result<(Value, TemplateOutputs), ResourceError> {
    let t = Address::new(Kind::Template, template);
    let trec = ctx.applied(&t)?;
    let tout: TemplateOutputs = super::super::asset::outputs(&t, &trec.outputs)?;
    let (kernel, cmdline) = steps::kernel(ctx, spec)?;
    let d = Address::new(Kind::Drive, &spec.root);
    let drec = ctx.applied(&d)?;
    let dout: DriveOutputs = super::super::asset::outputs(&d, &drec.outputs)?;
    let v = json!({
        "template": template,
        "template_key": tout.key,
        "image": tout.image,
        "kernel": kernel.kernel.path,
        "initrd": kernel.initrd.as_ref().map(|i| &i.path),
        "cmdline": cmdline,
        "vcpus": spec.vcpus,
        "memory": spec.memory,
        "root_size": dout.size,
        "nic": spec.network.is_some(),
        "qemu": qemu::version(),
    });
    Ok((v, tout))
}

/// Start the fresh VM `desired` from its template's warm snapshot (made now if there is
/// none). On error the caller stops what runs and boots the VM instead.
pub(super) async fn start(
    ctx: &Ctx,
    desired: &Resource,
    spec: &VmSpec,
    out: &mut VmOutputs,
    want: Value,
    template: &str,
) -> Result<(), ResourceError> {
    let addr = &desired.address;
    let (inputs, tout) = inputs(ctx, spec, template)?;
    let key = warm::key(&inputs);
    let (dest, _) = warm::dirs(&ctx.state_dir, &key);
    let state = ctx.state_dir.clone();
    let k = key.clone();
    let lock = blocking(move || warm::lock(&state, &k)).await?;
    warm::collect_garbage(&ctx.state_dir, template, &tout.key);
    let meta = match warm::usable(&dest, &inputs, &qemu::version()) {
        Some(m) => m,
        None => {
            tracing::info!("{addr}: making template.{template}'s warm snapshot (one boot)");
            build(ctx, desired, spec, out, &inputs, &key, &tout).await?
        }
    };
    // The root image is cloned while the lock keeps the snapshot from being replaced.
    let root = steps::drive_path(ctx, &spec.root)?;
    let src = dest.join(warm::ROOT_FILE);
    blocking(move || install_root(&src, &root)).await?;
    drop(lock);

    let loaded = super::snapshot::load(ctx, desired, spec, out, want, &dest, &meta).await;
    let t0 = match loaded {
        Ok(t0) => t0,
        Err(e) => {
            // A snapshot that does not load is of no use to the next VM either.
            let state = ctx.state_dir.clone();
            let _ = blocking(move || {
                let _l = warm::lock(&state, &key)?;
                snapshot::remove(&dest)
            })
            .await;
            return Err(ResourceError::Check(format!(
                "cannot start from template.{template}'s warm snapshot: {}",
                super::super::error_chain(&e)
            )));
        }
    };
    let loaded = t0.elapsed();
    let gate = steps::ready_gate(out, steps::RESTORE_FALLBACK);
    let run = out.run_dir.clone();
    blocking(move || qemu_snapshot::resume(&run)).await?;
    let (mounts, client) = steps::wait_ready_client(spec, out, Some(gate)).await?;
    out.mounts = mounts;
    let ready = t0.elapsed();
    let me = identity(desired, spec, out);
    super::identity::identify(addr, out, me, Some(client)).await;
    // Ready once it is itself: its address, hostname and entropy are the builder's before.
    out.boot_ms = Some(t0.elapsed().as_millis() as u64);
    // Where the time goes (docs/benchmarks.md).
    tracing::info!(
        "{addr}: started warm from template.{template} in {} ms: attached, VMM started and state loaded {} ms, agent answered {} ms, identity {} ms",
        t0.elapsed().as_millis(),
        loaded.as_millis(),
        (ready - loaded).as_millis(),
        (t0.elapsed() - ready).as_millis()
    );
    Ok(())
}

/// The clone's own identity, for `fort/identity`.
fn identity(desired: &Resource, spec: &VmSpec, out: &VmOutputs) -> Value {
    let mut id = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut id);
    }
    let mut v = json!({
        "hostname": desired.address.name,
        "machine_id": hex::encode(id),
    });
    if let Some(a) = &out.network {
        v["network"] = json!({
            "mac": spec.mac.clone().unwrap_or_else(|| a.mac.clone()),
            "ip": format!("{}/{}", a.ip, a.prefix),
            "gateway": a.gateway.to_string(),
            "dns": a.dns.iter().map(ToString::to_string).collect::<Vec<_>>(),
        });
    }
    v
}

/// Put a clone of the builder's root image in place of the VM's fresh root drive.
fn install_root(src: &Path, drive: &Path) -> Result<(), clone::CloneError> {
    let tmp = drive.with_extension("ext4.warm");
    let _ = std::fs::remove_file(&tmp);
    let done = clone::clone_file(src, &tmp).and_then(|_| {
        std::fs::rename(&tmp, drive).map_err(|source| clone::CloneError::Io {
            what: "cannot install",
            path: drive.to_path_buf(),
            source,
        })
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// Boot the builder with this VM's processes (recorded in its row as they start, so a
/// killed fort leaves them to the next apply, which stops them: they run no spec), save it
/// into `KEY.tmp/` and commit. The caller holds the key's lock.
async fn build(
    ctx: &Ctx,
    desired: &Resource,
    spec: &VmSpec,
    out: &mut VmOutputs,
    inputs: &Value,
    key: &str,
    tout: &TemplateOutputs,
) -> Result<Meta, ResourceError> {
    let addr = &desired.address;
    let (dest, tmp) = warm::dirs(&ctx.state_dir, key);
    snapshot::remove(&tmp).map_err(err)?;
    std::fs::create_dir_all(&tmp).map_err(|e| ResourceError::io("cannot create", &tmp, e))?;
    let root = tmp.join(warm::ROOT_FILE);
    let size = inputs["root_size"].as_u64().unwrap_or(0);
    let (img, r) = (tout.image.clone(), root.clone());
    blocking(move || {
        clone::clone_file(&img, &r)?;
        let len = std::fs::metadata(&r).map(|m| m.len()).unwrap_or(0);
        clone::grow(&r, size, len, || {})?;
        Ok::<_, clone::CloneError>(())
    })
    .await?;

    // The VM's attachment is its clone's; the builder's NIC is on no network.
    steps::attach(ctx, desired, spec, out).await?;
    let mut cfg = steps::config(ctx, desired, spec, out)?;
    let (_, base) = steps::kernel(ctx, spec)?;
    cfg.cmdline = format!("{base} fort.hostname={BUILDER_HOSTNAME}");
    cfg.root = root.clone();
    cfg.drives.clear();
    cfg.serials.clear();
    cfg.net = cfg.net.map(|_| NetConfig {
        tap: String::new(),
        mac: BUILDER_MAC.to_string(),
    });
    cfg.confine = confine::prepare(ctx, addr, spec, out, &cfg)?;
    // The image leaves with the snapshot: it is not one of the VM's drives.
    out.owned.retain(|p| p != &root);
    Qemu.check(&cfg).map_err(err)?;
    RunDir(&cfg.run_dir).prepare().map_err(err)?;

    let built = async {
        let c = cfg.clone();
        out.helper = steps::blocking(move || Qemu.start_helper(&c)).await?;
        if out.helper.is_some() {
            ctx.step(addr, Point::VmHelper, out)?;
        }
        let c = cfg.clone();
        let proc = steps::blocking(move || Qemu.start_vmm(&c)).await?;
        out.started = Some(Started {
            vmm: proc,
            helper: out.helper.take(),
        });
        // Runs no spec of the VM's: an apply that finds it (fort was killed) stops it.
        out.booted = Some(json!({ "warm_builder": key }));
        ctx.step(addr, Point::VmSpawned, out)?;
        steps::wait_ready(spec, out).await?;
        let (run, t, memory) = (out.run_dir.clone(), tmp.clone(), spec.memory);
        blocking(move || qemu_snapshot::suspend(&run, &t, memory)).await
    }
    .await;
    let stream = match built {
        Ok(s) => {
            // Saved: the builder's processes end without asking its guest.
            if let Some(p) = out.started.take() {
                let _ =
                    tokio::task::spawn_blocking(move || p.kill(std::time::Duration::from_secs(5)))
                        .await;
            }
            out.helper = None;
            out.booted = None;
            ctx.step(addr, Point::VmStopped, out)?;
            s
        }
        Err(e) => {
            steps::stop(ctx, addr, out).await?;
            let _ = snapshot::remove(&tmp);
            return Err(ResourceError::Check(format!(
                "cannot make the warm snapshot of template.{}: {}",
                inputs["template"].as_str().unwrap_or("?"),
                super::super::error_chain(&e)
            )));
        }
    };
    crate::host::confine::files::own(&root, 0, 0, 0o600).map_err(err)?;
    let meta = stream.meta(
        &format!("template.{}", inputs["template"].as_str().unwrap_or("?")),
        inputs.clone(),
    );
    let (t, d, m) = (tmp.clone(), dest.clone(), meta.clone());
    blocking(move || snapshot::commit(&t, &d, &m)).await?;
    Ok(meta)
}

/// What the plan says of a VM that starts warm, or of one of a warm template that boots and
/// why (only a first start is warm, so only a create says either).
pub(super) fn plan_details(spec: &VmSpec, op: crate::plan::Op) -> Vec<String> {
    match (&spec.warm, &spec.not_warm, op) {
        (Some(t), _, crate::plan::Op::Create) => vec![format!(
            "starts warm: restored from template.{t}'s snapshot (made by booting one VM of it, if there is none for this shape), then given its own identity"
        )],
        (None, Some(why), crate::plan::Op::Create) => vec![why.clone()],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::address::{Address, Kind};
    use crate::manifest::Spec;
    use crate::plan::Op;

    /// What the plan says of a new VM of a warm template, by VMM and data drives.
    #[test]
    fn the_plan_says_which_vms_of_a_warm_template_start_warm_and_why_others_boot() {
        let text = r#"[fort]
version = 1
[kernel.k]
url = "/boot/vmlinux"
[rootfs.r]
url = "/srv/r.tar"
[template.base]
rootfs = "r"
size = "128MiB"
warm = true
[template.cold]
rootfs = "r"
size = "128MiB"
[drive.data]
size = "32MiB"
[vm.q]
vmm = "qemu"
kernel = "k"
root = { template = "base", size = "256MiB" }
[vm.f]
kernel = "k"
root = { template = "base", size = "256MiB" }
[vm.d]
vmm = "qemu"
kernel = "k"
root = { template = "base", size = "256MiB" }
drives = ["data"]
[vm.c]
vmm = "qemu"
kernel = "k"
root = { template = "cold", size = "256MiB" }
"#;
        let m = crate::manifest::load_files(
            &[(std::path::PathBuf::from("fort.toml"), text.to_string())],
            std::path::Path::new("fort.toml"),
        )
        .unwrap();
        let cases: [(&str, &[&str]); 4] = [
            ("q", &["starts warm: restored from template.base's snapshot (made by booting one VM of it, if there is none for this shape), then given its own identity"]),
            ("f", &["boots: template.base is warm, but warm starts need vmm = \"qemu\" (with Firecracker, fort drives snapshots only for state = \"paused\" and \"suspended\")"]),
            ("d", &["boots: template.base is warm, but a VM with data drives does not start warm (the template's snapshot has none)"]),
            ("c", &[]),
        ];
        for (vm, want) in cases {
            let Spec::Vm(spec) = &m.resources[&Address::new(Kind::Vm, vm)].spec else {
                panic!("vm.{vm}");
            };
            assert_eq!(plan_details(spec, Op::Create), want, "vm.{vm}");
            // Only a first start.
            assert!(plan_details(spec, Op::Update).is_empty(), "vm.{vm}");
            // Not part of the spec the plan diffs and the state records.
            assert!(serde_json::to_value(spec)
                .unwrap()
                .get("not_warm")
                .is_none());
        }
    }
}
