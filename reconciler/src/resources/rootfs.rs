//! `rootfs.*`: a root filesystem tarball fetched, verified and cached as fetched; or an OCI
//! image pulled at its pinned (or plan-time resolved) digest, its config and layers cached as
//! blobs under their digests.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::asset::{self, CachedFile};
use super::kernel::spec_field;
use super::{Ctx, ResourceError, ResourceKind};
use crate::address::{Address, Kind};
use crate::host::oci::media::RunConfig;
use crate::manifest::{AssetSource, ImageSource, Resource, RootfsSpec, Spec};
use crate::plan::{Effect, Observation};
use crate::state::Record;

pub struct Rootfs;

/// The outputs of an image rootfs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageOutputs {
    /// `registry/repository:tag@digest` (or `oci-layout:…`), for messages.
    pub image: String,
    /// The digest the spec pins (an index or a manifest).
    pub digest: String,
    /// The `linux/amd64` manifest's digest.
    pub manifest: String,
    pub config: CachedFile,
    /// Env, WorkingDir, User, Entrypoint and Cmd of the image config.
    pub run_config: RunConfig,
    /// Bottom first.
    pub layers: Vec<LayerFile>,
    /// Bytes of the layers as fetched.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerFile {
    #[serde(flatten)]
    pub file: CachedFile,
    pub media_type: String,
}

/// What a rootfs record holds: an image's blobs, or one tarball.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RootfsOutputs {
    Image(Box<ImageOutputs>),
    Tarball(CachedFile),
}

impl RootfsOutputs {
    pub fn files(&self) -> Vec<CachedFile> {
        match self {
            RootfsOutputs::Tarball(f) => vec![f.clone()],
            RootfsOutputs::Image(i) => std::iter::once(i.config.clone())
                .chain(i.layers.iter().map(|l| l.file.clone()))
                .collect(),
        }
    }
}

#[async_trait]
impl ResourceKind for Rootfs {
    fn kind(&self) -> Kind {
        Kind::Rootfs
    }

    fn field_effect(&self, _field: &str) -> Effect {
        Effect::Update
    }

    async fn observe(&self, _ctx: &Ctx, record: &Record) -> Result<Observation, ResourceError> {
        match asset::outputs::<RootfsOutputs>(&record.address, &record.outputs)? {
            RootfsOutputs::Tarball(out) => {
                let source: AssetSource = spec_field(record, "source")?;
                asset::observe(&out, &source).await
            }
            image @ RootfsOutputs::Image(_) => asset::observe_entries(image.files()).await,
        }
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
        let out = match spec {
            RootfsSpec::Tarball { source } => RootfsOutputs::Tarball(
                asset::fetch(ctx, &desired.address, source, None, false).await?,
            ),
            RootfsSpec::Image { image } => {
                RootfsOutputs::Image(Box::new(pull(ctx, &desired.address, image).await?))
            }
        };
        if let Some(old) =
            recorded.and_then(|r| asset::outputs::<RootfsOutputs>(&r.address, &r.outputs).ok())
        {
            let new = out.files();
            let new: Vec<&CachedFile> = new.iter().collect();
            asset::release_replaced(ctx, &desired.address, &old.files(), &new)?;
        }
        serde_json::to_value(out).map_err(|e| ResourceError::Check(e.to_string()))
    }

    async fn destroy(&self, ctx: &Ctx, recorded: &Record) -> Result<(), ResourceError> {
        let out: RootfsOutputs = asset::outputs(&recorded.address, &recorded.outputs)?;
        asset::release(ctx, &recorded.address, &out.files())
    }
}

async fn pull(
    ctx: &Ctx,
    address: &Address,
    image: &ImageSource,
) -> Result<ImageOutputs, ResourceError> {
    let pulled = crate::host::oci::pull(ctx.fetcher()?, &address.to_string(), image).await?;
    let layers: Vec<LayerFile> = pulled
        .layers
        .into_iter()
        .map(|(f, media_type)| LayerFile {
            file: f.into(),
            media_type,
        })
        .collect();
    Ok(ImageOutputs {
        image: format!("{}@{}", image.name(), pulled.digest),
        size: layers.iter().map(|l| l.file.size).sum(),
        digest: pulled.digest,
        manifest: pulled.manifest,
        config: pulled.config.into(),
        run_config: pulled.run_config,
        layers,
    })
}
