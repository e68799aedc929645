//! `rootfs.*`: a root filesystem tarball fetched, verified and cached as fetched.

use async_trait::async_trait;

use super::asset::{self, CachedFile};
use super::kernel::spec_field;
use super::{Ctx, ResourceError, ResourceKind};
use crate::address::Kind;
use crate::manifest::{AssetSource, Resource, Spec};
use crate::plan::{Effect, Observation};
use crate::state::Record;

pub struct Rootfs;

#[async_trait]
impl ResourceKind for Rootfs {
    fn kind(&self) -> Kind {
        Kind::Rootfs
    }

    fn field_effect(&self, _field: &str) -> Effect {
        Effect::Update
    }

    async fn observe(&self, _ctx: &Ctx, record: &Record) -> Result<Observation, ResourceError> {
        let out: CachedFile = asset::outputs(&record.address, &record.outputs)?;
        let source: AssetSource = spec_field(record, "source")?;
        asset::observe(&out, &source).await
    }

    async fn apply(
        &self,
        ctx: &Ctx,
        desired: &Resource,
        recorded: Option<&Record>,
    ) -> Result<serde_json::Value, ResourceError> {
        let Spec::Rootfs(spec) = &desired.spec else {
            return Err(ResourceError::Check(format!(
                "{} has no rootfs spec",
                desired.address
            )));
        };
        let file = asset::fetch(ctx, &desired.address, &spec.source, None, false).await?;
        if let Some(old) =
            recorded.and_then(|r| asset::outputs::<CachedFile>(&r.address, &r.outputs).ok())
        {
            asset::release_replaced(ctx, &desired.address, &[old], &[&file])?;
        }
        serde_json::to_value(file).map_err(|e| ResourceError::Check(e.to_string()))
    }

    async fn destroy(&self, ctx: &Ctx, recorded: &Record) -> Result<(), ResourceError> {
        let out: CachedFile = asset::outputs(&recorded.address, &recorded.outputs)?;
        asset::release(ctx, &recorded.address, &[out])
    }
}
