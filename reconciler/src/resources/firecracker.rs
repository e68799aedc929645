//! `firecracker.*`: the VMM binary as a verified asset, extracted from a release archive and
//! checked to run (`--version`).

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::asset::{self, CachedFile};
use super::kernel::spec_field;
use super::{Ctx, ResourceError, ResourceKind};
use crate::address::Kind;
use crate::manifest::{AssetSource, Resource, Spec};
use crate::plan::{Effect, Observation};
use crate::state::Record;

pub struct Firecracker;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirecrackerOutputs {
    #[serde(flatten)]
    pub binary: CachedFile,
    /// The first line `--version` printed, e.g. `Firecracker v1.12.0`.
    pub version: String,
    /// The jailer (`jailer_member`), checked to answer `--version` too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jailer: Option<CachedFile>,
}

#[async_trait]
impl ResourceKind for Firecracker {
    fn kind(&self) -> Kind {
        Kind::Firecracker
    }

    fn field_effect(&self, _field: &str) -> Effect {
        Effect::Update
    }

    async fn observe(&self, _ctx: &Ctx, record: &Record) -> Result<Observation, ResourceError> {
        let out: FirecrackerOutputs = asset::outputs(&record.address, &record.outputs)?;
        let source: AssetSource = spec_field(record, "source")?;
        let binary = asset::observe(&out.binary, &source).await?;
        match (&out.jailer, &binary) {
            (Some(j), Observation::Ok) => asset::observe(j, &source).await,
            _ => Ok(binary),
        }
    }

    async fn apply(
        &self,
        ctx: &Ctx,
        desired: &Resource,
        recorded: Option<&Record>,
    ) -> Result<serde_json::Value, ResourceError> {
        let Spec::Firecracker(spec) = &desired.spec else {
            return Err(ResourceError::Check(format!(
                "{} has no firecracker spec",
                desired.address
            )));
        };
        let binary = asset::fetch(
            ctx,
            &desired.address,
            &spec.source,
            spec.member.as_deref(),
            true,
        )
        .await?;
        let version = version_of(&binary.path).await?;
        let jailer = match &spec.jailer_member {
            Some(member) => {
                let j =
                    asset::fetch(ctx, &desired.address, &spec.source, Some(member), true).await?;
                version_of(&j.path).await?;
                Some(j)
            }
            None => None,
        };
        if let Some(old) =
            recorded.and_then(|r| asset::outputs::<FirecrackerOutputs>(&r.address, &r.outputs).ok())
        {
            let now: Vec<&CachedFile> = std::iter::once(&binary).chain(&jailer).collect();
            let before: Vec<CachedFile> = std::iter::once(old.binary).chain(old.jailer).collect();
            asset::release_replaced(ctx, &desired.address, &before, &now)?;
        }
        serde_json::to_value(FirecrackerOutputs {
            binary,
            version,
            jailer,
        })
        .map_err(|e| ResourceError::Check(e.to_string()))
    }

    async fn destroy(&self, ctx: &Ctx, recorded: &Record) -> Result<(), ResourceError> {
        let out: FirecrackerOutputs = asset::outputs(&recorded.address, &recorded.outputs)?;
        let files: Vec<CachedFile> = std::iter::once(out.binary).chain(out.jailer).collect();
        asset::release(ctx, &recorded.address, &files)
    }
}

/// Run `BINARY --version`: release archives also hold `.debug` files and the jailer, and a
/// wrong member or architecture should fail here, not when the first VM starts.
async fn version_of(binary: &Path) -> Result<String, ResourceError> {
    let run = tokio::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| {
            ResourceError::Check(format!(
                "{} --version did not finish within 10s",
                binary.display()
            ))
        })?
        .map_err(|e| ResourceError::io("cannot run", binary, e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().unwrap_or("").trim().to_string();
    if !out.status.success() || first.is_empty() {
        return Err(ResourceError::Check(format!(
            "{} --version failed ({}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(first)
}
