//! The serde types of `[sandbox.NAME]` (a shape VMs are made from on demand) and of the
//! `[instance]` table fort writes at the top of each sandbox file (docs/sandboxes.md).

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::raw::{RawRoot, RawSize, RawVmm};

/// A VM shape instantiated on demand by `fort mcp --host` / `fort serve` (`sandbox_create`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSandbox {
    /// "firecracker" (default) or "qemu".
    #[schemars(with = "Option<RawVmm>")]
    pub vmm: Option<Spanned<RawVmm>>,
    #[schemars(with = "String")]
    pub kernel: Spanned<String>,
    /// { template, size }: each instance gets a root drive of its own, never protected.
    #[schemars(with = "super::raw::InlineRootSchema")]
    pub root: Spanned<RawRoot>,
    /// 1 or an even number (default 1).
    #[schemars(with = "Option<u32>")]
    pub vcpus: Option<Spanned<i64>>,
    /// Memory, e.g. "1GiB" (default "512MiB").
    #[schemars(with = "Option<String>")]
    pub memory: Option<Spanned<RawSize>>,
    #[schemars(with = "Option<String>")]
    pub network: Option<Spanned<String>>,
    /// How long an instance lives unless `sandbox_create` asks otherwise (default "1h").
    #[schemars(with = "Option<String>")]
    pub ttl: Option<Spanned<String>>,
    /// The longest `ttl` a create or an extend may ask for (default "24h").
    #[schemars(with = "Option<String>")]
    pub max_ttl: Option<Spanned<String>>,
    /// Destroy an instance no agent request reached for this long (default: never).
    #[schemars(with = "Option<String>")]
    pub idle_timeout: Option<Spanned<String>>,
    /// At most this many instances at once (default: as many as the host's memory holds).
    #[schemars(with = "Option<u32>")]
    pub max_instances: Option<Spanned<i64>>,
}

/// What fort records about an instance, at the top of its file in `state_dir/sandboxes/`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInstance {
    /// The `[sandbox.NAME]` it was made from.
    pub sandbox: Spanned<String>,
    /// RFC 3339, UTC.
    pub created: Spanned<String>,
    /// RFC 3339, UTC: when fort destroys it.
    pub expires: Spanned<String>,
    pub idle_timeout: Option<Spanned<String>>,
}
