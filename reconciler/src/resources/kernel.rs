//! `kernel.*`: a guest kernel (and optional initrd) fetched, verified and cached.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::asset::{self, CachedFile};
use super::{Ctx, ResourceError, ResourceKind};
use crate::address::Kind;
use crate::manifest::{AssetSource, Resource, Spec};
use crate::plan::{Effect, Observation};
use crate::state::Record;

pub struct Kernel;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelOutputs {
    #[serde(flatten)]
    pub kernel: CachedFile,
    pub initrd: Option<CachedFile>,
}

#[async_trait]
impl ResourceKind for Kernel {
    fn kind(&self) -> Kind {
        Kind::Kernel
    }

    fn field_effect(&self, _field: &str) -> Effect {
        // A new source is fetched beside the old one; the cmdline is only read by VMs.
        Effect::Update
    }

    async fn observe(&self, _ctx: &Ctx, record: &Record) -> Result<Observation, ResourceError> {
        let out: KernelOutputs = asset::outputs(&record.address, &record.outputs)?;
        let source: AssetSource = spec_field(record, "source")?;
        let initrd: Option<AssetSource> = spec_field(record, "initrd")?;
        let o = asset::observe(&out.kernel, &source).await?;
        if o != Observation::Ok {
            return Ok(o);
        }
        match (&out.initrd, &initrd) {
            (Some(f), Some(src)) => asset::observe(f, src).await,
            _ => Ok(Observation::Ok),
        }
    }

    async fn apply(
        &self,
        ctx: &Ctx,
        desired: &Resource,
        recorded: Option<&Record>,
    ) -> Result<serde_json::Value, ResourceError> {
        let Spec::Kernel(spec) = &desired.spec else {
            return Err(ResourceError::Check(format!(
                "{} has no kernel spec",
                desired.address
            )));
        };
        let kernel = asset::fetch(ctx, &desired.address, &spec.source, None, false).await?;
        let initrd = match &spec.initrd {
            Some(src) => Some(asset::fetch(ctx, &desired.address, src, None, false).await?),
            None => None,
        };
        if let Some(old) =
            recorded.and_then(|r| asset::outputs::<KernelOutputs>(&r.address, &r.outputs).ok())
        {
            let mut old_files = vec![old.kernel];
            old_files.extend(old.initrd);
            let mut new_files = vec![&kernel];
            new_files.extend(initrd.as_ref());
            asset::release_replaced(ctx, &desired.address, &old_files, &new_files)?;
        }
        serde_json::to_value(KernelOutputs { kernel, initrd })
            .map_err(|e| ResourceError::Check(e.to_string()))
    }

    async fn destroy(&self, ctx: &Ctx, recorded: &Record) -> Result<(), ResourceError> {
        let out: KernelOutputs = asset::outputs(&recorded.address, &recorded.outputs)?;
        let mut files = vec![out.kernel];
        files.extend(out.initrd);
        asset::release(ctx, &recorded.address, &files)
    }
}

/// One field of a recorded spec, decoded.
pub(super) fn spec_field<T: serde::de::DeserializeOwned>(
    record: &Record,
    field: &str,
) -> Result<T, ResourceError> {
    let v = record
        .spec
        .get(field)
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    serde_json::from_value(v).map_err(|e| {
        ResourceError::Check(format!(
            "recorded spec of {} has an unreadable `{field}`: {e}",
            record.address
        ))
    })
}
