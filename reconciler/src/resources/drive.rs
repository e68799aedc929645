//! `drive.*`: a VM disk file in `state_dir/drives/` — a copy-on-write clone of its template's
//! image grown to `size`, or an empty ext4 drive. Drives hold data: they are grown, never
//! shrunk, and only destroyed or replaced when the user asks (`!` in plans).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::asset;
use super::template::TemplateOutputs;
use super::{Ctx, ResourceError, ResourceKind};
use crate::address::{Address, Kind};
use crate::crash::{self, Point};
use crate::host::image::clone::{self, Method};
use crate::host::procs;
use crate::manifest::units::format_size;
use crate::manifest::{Resource, Spec};
use crate::plan::{self, Change, Effect, Observation, PlanError, PlanOptions};
use crate::state::Record;

pub struct Drive;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriveOutputs {
    pub path: PathBuf,
    pub size: u64,
    pub method: Method,
    /// The template image it was cloned from (None for empty drives).
    pub image: Option<PathBuf>,
}

#[async_trait]
impl ResourceKind for Drive {
    fn kind(&self) -> Kind {
        Kind::Drive
    }

    fn field_effect(&self, _field: &str) -> Effect {
        // size: grown in place; protect: bookkeeping; template/pool: the data stays (a drive is
        // replaced only on request).
        Effect::Update
    }

    fn holds_data(&self) -> bool {
        true
    }

    fn plan(
        &self,
        desired: Option<&Resource>,
        recorded: Option<&Record>,
        observed: Option<&Observation>,
        opts: &PlanOptions,
        _notes: &mut Vec<String>,
    ) -> Result<Option<Change>, PlanError> {
        if let (
            Some(Resource {
                spec: Spec::Drive(d),
                address,
                ..
            }),
            Some(r),
        ) = (
            desired,
            recorded.filter(|r| {
                // Equal hashes mean an equal size; unchanged drives skip decoding the record.
                desired.is_some_and(|d| d.spec_hash() != r.spec_hash)
            }),
        ) {
            let before = r
                .spec
                .get("size")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            if d.size < before && !opts.replace.contains(address) {
                return Err(PlanError::Refused {
                    address: address.clone(),
                    why: format!(
                        "size {} is smaller than its current {}: drives are never shrunk (use --replace {address} to start over, losing its data)",
                        format_size(d.size),
                        format_size(before)
                    ),
                });
            }
        }
        let mut change = plan::standard(self, desired, recorded, observed, opts)?;
        if let (Some(c), Some(Observation::Missing { .. })) = (change.as_mut(), observed) {
            c.reasons
                .push("its data is gone: it will be recreated from its template (or empty)".into());
        }
        Ok(change)
    }

    async fn observe(&self, _ctx: &Ctx, record: &Record) -> Result<Observation, ResourceError> {
        let out: DriveOutputs = asset::outputs(&record.address, &record.outputs)?;
        Ok(asset::observe_sized("drive file", &out.path, out.size))
    }

    async fn apply(
        &self,
        ctx: &Ctx,
        desired: &Resource,
        recorded: Option<&Record>,
    ) -> Result<serde_json::Value, ResourceError> {
        let Spec::Drive(spec) = &desired.spec else {
            return Err(ResourceError::Check(format!(
                "{} has no drive spec",
                desired.address
            )));
        };
        let addr = &desired.address;
        let dir = ctx.state_dir.join("drives");
        std::fs::create_dir_all(&dir).map_err(|e| ResourceError::io("cannot create", &dir, e))?;
        let path = dir.join(format!("{}.ext4", addr.name));
        let previous: Option<DriveOutputs> =
            recorded.and_then(|r| asset::outputs(&r.address, &r.outputs).ok());
        if recorded.and_then(|r| recorded_path(&r.outputs)).is_none() {
            ctx.step(addr, Point::DriveIntent, &DrivePath { path: path.clone() })?;
        }

        let image = match &spec.template {
            Some(t) => {
                let a = Address::new(Kind::Template, t);
                let rec = ctx.applied(&a)?;
                let out: TemplateOutputs = asset::outputs(&a, &rec.outputs)?;
                Some(out.image)
            }
            None => None,
        };
        // The record, not the file, says how far a grow got: a file already longer than the
        // recorded size may hold a filesystem a killed resize never grew.
        let grown_to = previous.as_ref().map_or(0, |p| p.size);
        if let Ok(m) = std::fs::metadata(&path) {
            if m.len() < spec.size || m.len() > grown_to {
                refuse_if_in_use(addr, &path, "grow")?;
            }
        }
        let (path2, image2) = (path.clone(), image.clone());
        let size = spec.size;
        let (method, len) =
            tokio::task::spawn_blocking(move || make(&path2, image2.as_deref(), size, grown_to))
                .await
                .map_err(|e| ResourceError::Check(format!("drive task failed: {e}")))??;
        // An existing drive keeps how it was made and what it came from.
        let (method, image) = match (method, previous) {
            (None, Some(p)) => (p.method, p.image),
            (m, _) => (m.unwrap_or(Method::Copy), image),
        };
        serde_json::to_value(DriveOutputs {
            path,
            size: len,
            method,
            image,
        })
        .map_err(|e| ResourceError::Check(e.to_string()))
    }

    async fn destroy(&self, _ctx: &Ctx, recorded: &Record) -> Result<(), ResourceError> {
        // Also for a drive whose first apply was interrupted: its intent names the path.
        let Some(path) = recorded_path(&recorded.outputs) else {
            return Ok(());
        };
        refuse_if_in_use(&recorded.address, &path, "delete")?;
        for p in [part_of(&path), path] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ResourceError::io("cannot remove", &p, e))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The intent of a drive, recorded before its file exists.
#[derive(Serialize)]
struct DrivePath {
    path: PathBuf,
}

fn recorded_path(outputs: &serde_json::Value) -> Option<PathBuf> {
    outputs
        .get("path")
        .and_then(|p| p.as_str())
        .map(PathBuf::from)
}

fn part_of(path: &Path) -> PathBuf {
    path.with_extension("ext4.part")
}

/// Nothing is grown or deleted under a live process: a guest believes what it wrote is
/// there. Stray VMMs of fort's are stopped before (leftovers of interrupted runs), so any
/// holder here is a VM that still uses the drive, or someone else's process.
fn refuse_if_in_use(addr: &Address, path: &Path, verb: &str) -> Result<(), ResourceError> {
    let held = procs::holders(path);
    if held.is_empty() {
        return Ok(());
    }
    let who: Vec<String> = held
        .iter()
        .map(|h| format!("{} (PID {})", h.name, h.proc.pid))
        .collect();
    Err(ResourceError::Check(format!(
        "{addr}: {} is open by {}: fort does not {verb} a drive a running process uses; stop the VM using it (state = \"stopped\") or that process first — nothing was changed",
        path.display(),
        who.join(", ")
    )))
}

/// Measure, then act: an existing drive is only grown; a missing one is cloned (or made
/// empty) into a temp file, grown, and renamed into place. Returns how it was made (None when
/// it already existed) and its length.
fn make(
    path: &Path,
    image: Option<&Path>,
    size: u64,
    grown_to: u64,
) -> Result<(Option<Method>, u64), ResourceError> {
    let err = |e: clone::CloneError| ResourceError::Check(crate::resources::error_chain(&e));
    if path.exists() {
        let len =
            clone::grow(path, size, grown_to, || crash::hit(Point::DriveResizing)).map_err(err)?;
        return Ok((None, len));
    }
    let tmp = part_of(path);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let method = match image {
            Some(img) => {
                let m = clone::clone_file(img, &tmp).map_err(err)?;
                crash::hit(Point::DriveCloned);
                let len = std::fs::metadata(&tmp)
                    .map_err(|e| ResourceError::io("cannot stat", &tmp, e))?
                    .len();
                if len > size {
                    return Err(ResourceError::Check(format!(
                        "size {} is smaller than the template's image ({}): drives are never shrunk",
                        format_size(size),
                        format_size(len)
                    )));
                }
                clone::grow(&tmp, size, len, || {}).map_err(err)?;
                m
            }
            None => {
                clone::mkfs(&tmp, size).map_err(err)?;
                crash::hit(Point::DriveFormatted);
                Method::Mkfs
            }
        };
        // Root's only until a VM's uid is given it: `drives/` is traversable by VMs' uids,
        // and a drive's name is no secret.
        crate::host::confine::files::set_mode(&tmp, 0o600)
            .map_err(|e| ResourceError::Check(super::error_chain(&e)))?;
        std::fs::rename(&tmp, path).map_err(|e| ResourceError::io("cannot install", path, e))?;
        Ok(Some(method))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let len = std::fs::metadata(path).map_or(size, |m| m.len());
    Ok((result?, len))
}
