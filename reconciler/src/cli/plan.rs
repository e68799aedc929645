//! `fort plan`, and the planning step `fort apply`/`destroy` share.

use std::collections::BTreeMap;
use std::path::Path;

use super::args::{DiffFormat, PlanArgs};
use super::session::{self, absolute};
use super::{exit, term, Cli, CliError};
use crate::address::Address;
use crate::manifest::{Manifest, Resource};
use crate::orphans;
use crate::plan::{self, capacity, render, Plan, PlanInput, PlanOptions, ResolvedImage};
use crate::resources::{self, Ctx};
use crate::state::{Record, StateStore};

/// Resolve the tags of image rootfs to digests (a manifest request each, no layers) and pin
/// them into the manifest, so the plan and everything built from it use exactly those.
pub async fn resolve_images(
    manifest: Manifest,
) -> Result<(Manifest, Vec<ResolvedImage>), CliError> {
    use crate::manifest::{RootfsSpec, Spec};
    let unpinned: Vec<(&Address, &crate::manifest::ImageSource)> = manifest
        .resources
        .iter()
        .filter_map(|(a, r)| match &r.spec {
            Spec::Rootfs(RootfsSpec::Image { image }) if image.digest.is_none() => Some((a, image)),
            _ => None,
        })
        .collect();
    if unpinned.is_empty() {
        return Ok((manifest, Vec::new()));
    }
    let lookups = unpinned.iter().map(|(a, image)| async move {
        crate::host::oci::resolve(image)
            .await
            .map(|digest| ResolvedImage {
                address: (*a).clone(),
                image: image.name(),
                digest,
            })
            .map_err(|source| CliError::Image {
                address: (*a).clone(),
                source: Box::new(source),
            })
    });
    let images = futures_util::future::join_all(lookups)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let digests = images
        .iter()
        .map(|i| (i.address.name.clone(), i.digest.clone()))
        .collect();
    Ok((manifest.pin_images(&digests), images))
}

/// Say what each resolved tag names: under its rootfs's change, or as a note.
fn show_images(images: &[ResolvedImage], changes: &mut [plan::Change], notes: &mut Vec<String>) {
    for i in images {
        let line = format!("image: {} → {}", i.image, i.digest);
        match changes.iter_mut().find(|c| c.address == i.address) {
            Some(c) => c.details.push(line),
            None => notes.push(format!("{}: {line} (unchanged)", i.address)),
        }
    }
}

/// Observe and diff: the plan for `manifest` (None for destroy plans) against `recorded`.
/// `images` are the tags `resolve_images` pinned into the manifest.
pub async fn make_plan(
    ctx: &Ctx,
    manifest: Option<&Manifest>,
    recorded: &BTreeMap<Address, Record>,
    state_digest: String,
    options: PlanOptions,
    images: Vec<ResolvedImage>,
) -> Result<Plan, CliError> {
    let empty = BTreeMap::new();
    let desired: &BTreeMap<Address, Resource> = manifest.map_or(&empty, |m| &m.resources);
    let observed = if options.destroy {
        BTreeMap::new()
    } else {
        resources::observe_all(ctx, desired, recorded).await
    };
    // Validate targets against everything known, so a typo is an error, not an empty plan.
    if !options.targets.is_empty() {
        let graph = plan::graph_of(desired, recorded)?;
        for t in &options.targets {
            graph.with_dependencies(std::slice::from_ref(t))?;
        }
    }
    let input = PlanInput {
        desired,
        recorded,
        observed: &observed,
        options: &options,
    };
    let (mut changes, mut notes) = plan::diff(&input, &resources::kind)?;
    if let Some(m) = manifest.filter(|m| !m.held.is_empty()) {
        // A sandbox file that does not validate: its resources stay as they are.
        changes.retain(|c| !m.held.contains(&c.address));
        for d in &m.sandbox_problems {
            notes.push(format!(
                "{d}: this sandbox is left as it is until its file is fixed or removed"
            ));
        }
    }
    if let Some(m) = manifest {
        // Reaping is the loop's (and apply's) job; a plan says what is due.
        let now = crate::host::sandboxes::now();
        for i in m.instances.values().filter(|i| now >= i.expires) {
            notes.push(format!(
                "vm.{}: its sandbox expired; the next `fort apply`, `fort watch` or `fort serve` pass destroys it",
                i.vm
            ));
        }
    }
    show_images(&images, &mut changes, &mut notes);
    last_failures(ctx, recorded, &mut changes)?;
    preflight(ctx, desired, &changes).await?;
    init_details(desired, recorded, &mut changes)?;
    if !options.destroy && !changes.is_empty() {
        capacity::check(&changes, desired, &host_capacity(ctx, desired, recorded))?;
    }
    notes.extend(clone_note(&ctx.state_dir, desired, &changes));
    // Leftovers are looked for in destroy plans too: destroy leaves nothing behind.
    let orphans = match orphans::scan(ctx, recorded).await {
        Ok(mut o) if !options.targets.is_empty() => {
            // A targeted plan touches only what it selects, leftovers included.
            let graph = plan::graph_of(desired, recorded)?;
            let selected = if options.destroy {
                graph.with_dependents(&options.targets)?
            } else {
                graph.with_dependencies(&options.targets)?
            };
            o.retain(|x| x.owner().is_some_and(|a| selected.contains(&a)));
            o
        }
        Ok(o) => o,
        Err(e) => {
            notes.push(format!(
                "leftovers of interrupted runs were not looked for: {}",
                resources::error_chain(&e)
            ));
            Vec::new()
        }
    };
    Ok(Plan {
        format_version: plan::FORMAT_VERSION,
        fort_version: crate::VERSION.to_string(),
        manifest: manifest.map(|m| absolute(&m.path)),
        manifest_digest: manifest.map_or_else(String::new, Manifest::digest),
        state_dir: ctx.state_dir.clone(),
        state_digest,
        summary: plan::summarize(&changes, &orphans),
        options,
        changes,
        notes,
        orphans,
        images,
    })
}

/// What the capacity checks need to know of the host.
fn host_capacity(
    ctx: &Ctx,
    desired: &BTreeMap<Address, Resource>,
    recorded: &BTreeMap<Address, Record>,
) -> capacity::Host {
    use crate::host::image::clone::{clone_method, Method};
    use crate::manifest::Spec;
    use std::os::unix::fs::MetadataExt;
    let (memory_total, memory_available) = crate::host::meminfo();
    let output = |kind, name: &str, field: &str| {
        recorded
            .get(&Address::new(kind, name))
            .and_then(|r| r.outputs.get(field).cloned())
    };
    let image_bytes = desired
        .iter()
        .filter_map(|(a, r)| match &r.spec {
            Spec::Template(t) => {
                let image = output(crate::Kind::Template, &a.name, "image")
                    .and_then(|p| p.as_str().map(std::path::PathBuf::from))
                    .and_then(|p| std::fs::metadata(p).ok())
                    .map(|m| m.blocks() * 512);
                let rootfs =
                    || output(crate::Kind::Rootfs, &t.rootfs, "size").and_then(|s| s.as_u64());
                Some((a.name.clone(), image.or_else(rootfs)?))
            }
            _ => None,
        })
        .collect();
    capacity::Host {
        memory_total,
        memory_available,
        disk_free: crate::host::disk_free(&ctx.state_dir),
        reflink: clone_method(&ctx.state_dir.join("drives")).1 == Method::Reflink,
        image_bytes,
        running: resources::vm::running_memory(recorded),
    }
}

/// A create whose last try failed says so (a failed first create leaves no row, only
/// history). Only looked up when the plan creates something unrecorded.
fn last_failures(
    ctx: &Ctx,
    recorded: &BTreeMap<Address, Record>,
    changes: &mut [plan::Change],
) -> Result<(), CliError> {
    let fresh = |c: &plan::Change| c.op == plan::Op::Create && !recorded.contains_key(&c.address);
    if !changes.iter().any(fresh) {
        return Ok(());
    }
    let failures = ctx.with_store(|s| s.last_failures())?;
    for c in changes.iter_mut().filter(|c| fresh(c)) {
        if let Some(e) = failures.get(&c.address) {
            c.reasons.push(format!("the last apply failed: {e}"));
        }
    }
    Ok(())
}

/// Host checks for what the plan creates: a refusal names the resource and why.
async fn preflight(
    ctx: &Ctx,
    desired: &BTreeMap<Address, Resource>,
    changes: &[plan::Change],
) -> Result<(), CliError> {
    for c in changes {
        // A VM's ports change in place: the ports it newly publishes are checked too.
        let update_checked = c.op == plan::Op::Update && c.address.kind == crate::Kind::Vm;
        if !matches!(
            c.op,
            plan::Op::Create | plan::Op::Replace | plan::Op::Restart
        ) && !update_checked
        {
            continue;
        }
        let Some(d) = desired.get(&c.address) else {
            continue;
        };
        let why = match resources::kind(c.address.kind).preflight(ctx, d).await {
            Ok(None) => continue,
            Ok(Some(why)) => why,
            Err(e) => format!("cannot check the host: {}", resources::error_chain(&e)),
        };
        return Err(plan::PlanError::Refused {
            address: c.address.clone(),
            why,
        }
        .into());
    }
    Ok(())
}

/// Templates with `init = "distro"` that the plan builds say which init their image runs —
/// read from the rootfs tarball's entry list when its content is already cached (no download,
/// nothing unpacked), else apply detects it right after the fetch. An image without an init is
/// refused here with the words apply would use.
fn init_details(
    desired: &BTreeMap<Address, Resource>,
    recorded: &BTreeMap<Address, Record>,
    changes: &mut [plan::Change],
) -> Result<(), CliError> {
    use crate::host::image::init::{detect, InitError};
    use crate::manifest::{InitMode, Spec};
    use crate::resources::rootfs::RootfsOutputs;
    for c in changes.iter_mut() {
        if !matches!(
            c.op,
            plan::Op::Create | plan::Op::Update | plan::Op::Replace
        ) {
            continue;
        }
        let Some(Spec::Template(t)) = desired.get(&c.address).map(|r| &r.spec) else {
            continue;
        };
        if t.init != InitMode::Distro || !t.guest_agent {
            continue;
        }
        let rootfs = recorded
            .get(&Address::new(crate::Kind::Rootfs, &t.rootfs))
            .and_then(|r| serde_json::from_value::<RootfsOutputs>(r.outputs.clone()).ok());
        let detail = match rootfs.and_then(|r| cached_tree(&r).map(|t| t.and_then(|t| detect(&t))))
        {
            None => "init: detected by apply once the rootfs is fetched".to_string(),
            Some(Ok(d)) => format!("init: {d}"),
            Some(Err(e @ InitError::Archive { .. })) => format!("init: unknown yet ({e})"),
            Some(Err(e)) => {
                return Err(plan::PlanError::Refused {
                    address: c.address.clone(),
                    why: e.to_string(),
                }
                .into())
            }
        };
        c.details.push(detail);
    }
    Ok(())
}

/// The entry list of a rootfs whose content is all cached (a tarball, or every layer of an
/// image), read from the cache only; `None` when something is not there yet.
fn cached_tree(
    rootfs: &crate::resources::rootfs::RootfsOutputs,
) -> Option<Result<crate::host::image::init::IndexTree, crate::host::image::init::InitError>> {
    use crate::host::image::init::{index_archive, index_layers, InitError};
    use crate::resources::rootfs::RootfsOutputs;
    match rootfs {
        RootfsOutputs::Tarball(f) => f.path.is_file().then(|| index_archive(&f.path)),
        RootfsOutputs::Image(i) => {
            if !i.layers.iter().all(|l| l.file.path.is_file()) {
                return None;
            }
            let mut readers = Vec::new();
            for l in &i.layers {
                let compression = crate::host::oci::media::compression_of(&l.media_type)?;
                match crate::host::oci::flatten::layer_reader(&l.file.path, compression) {
                    Ok(r) => readers.push((l.file.path.clone(), r)),
                    Err(e) => {
                        return Some(Err(InitError::Archive {
                            archive: l.file.path.clone(),
                            why: e.to_string(),
                        }))
                    }
                }
            }
            Some(index_layers(readers))
        }
    }
}

/// Say once how the drives this plan creates from templates will be made on this host.
fn clone_note(
    state_dir: &Path,
    desired: &BTreeMap<Address, Resource>,
    changes: &[plan::Change],
) -> Option<String> {
    use crate::host::image::clone::{clone_method, Method};
    use crate::manifest::{DriveSpec, Spec};
    let clones = changes
        .iter()
        .filter(|c| matches!(c.op, plan::Op::Create | plan::Op::Replace))
        .filter(|c| {
            desired.get(&c.address).is_some_and(|r| {
                matches!(
                    &r.spec,
                    Spec::Drive(DriveSpec {
                        template: Some(_),
                        ..
                    })
                )
            })
        })
        .count();
    if clones == 0 {
        return None;
    }
    let dir = state_dir.join("drives");
    let (fs, method) = clone_method(&dir);
    let n = if clones == 1 {
        "1 drive".to_string()
    } else {
        format!("{clones} drives")
    };
    Some(match method {
        Method::Reflink => format!(
            "{n} will be cloned from template images by reflink: {} is on {fs}, so clones share the image's extents (instant, no space used until written)",
            dir.display()
        ),
        _ => format!(
            "{n} will be cloned from template images by sparse copy: {} is on {fs}, which cannot share extents (put the state dir on btrfs or XFS for instant copy-on-write clones)",
            dir.display()
        ),
    })
}

pub async fn plan(cli: &Cli, args: &PlanArgs) -> Result<u8, CliError> {
    let manifest = match &args.rev {
        Some(rev) => session::load_manifest_at(cli, rev)?,
        None => session::load_manifest(cli)?,
    };
    let (manifest, images) = resolve_images(manifest).await?;
    let state_dir = session::state_dir(cli, Some(&manifest));
    let store = crate::state::SqliteStore::open_readonly(&state_dir)?;
    let recorded = store.resources()?;
    let digest = store.digest()?;
    let ctx = session::ctx(&state_dir, store, false, Some(&manifest));
    let options = PlanOptions {
        targets: args.selection.targets.clone(),
        replace: args.replace.clone(),
        allow_data_loss: args.allow_data_loss,
        destroy: args.destroy,
    };
    let plan = make_plan(&ctx, Some(&manifest), &recorded, digest, options, images).await?;
    if let Some(out) = &args.out {
        save(&plan, out)?;
    }
    let format = if cli.json {
        DiffFormat::Json
    } else {
        args.format
    };
    if format == DiffFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        );
    } else if format == DiffFormat::Markdown {
        print!("{}", render::markdown(&plan, manifest.host.as_deref()));
    } else {
        print!("{}", render::render(&plan, term::stdout_style()));
        if let Some(out) = &args.out {
            println!(
                "\nSaved the plan to {}. Apply exactly it with: fort apply {}",
                out.display(),
                out.display()
            );
        }
    }
    Ok(if args.detailed_exitcode && !plan.is_empty() {
        exit::CHANGES
    } else {
        exit::OK
    })
}

fn save(plan: &Plan, out: &Path) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(plan).unwrap_or_default();
    std::fs::write(out, text + "\n").map_err(|source| CliError::Io {
        what: "cannot write plan to",
        path: out.to_path_buf(),
        source,
    })
}
