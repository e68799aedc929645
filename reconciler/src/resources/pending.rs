//! Kinds whose host drivers come in later issues (network, vm): they are
//! parsed, validated and planned like the others, and applying them fails clearly.

use async_trait::async_trait;

use super::{Ctx, ResourceError, ResourceKind};
use crate::address::Kind;
use crate::manifest::Resource;
use crate::plan::{Effect, Observation};
use crate::state::Record;

pub struct Pending {
    kind: Kind,
}

pub static TEMPLATE: Pending = Pending {
    kind: Kind::Template,
};
pub static VM: Pending = Pending { kind: Kind::Vm };

#[async_trait]
impl ResourceKind for Pending {
    fn kind(&self) -> Kind {
        self.kind
    }

    fn field_effect(&self, field: &str) -> Effect {
        match (self.kind, field) {
            (Kind::Vm, "state" | "restart") => Effect::Update,
            (Kind::Vm, _) => Effect::Restart,
            (Kind::Drive, "size" | "protect") => Effect::Update,
            (Kind::Network, "dns") => Effect::Update,
            _ => Effect::Replace,
        }
    }

    fn holds_data(&self) -> bool {
        self.kind == Kind::Drive
    }

    async fn observe(&self, _ctx: &Ctx, _record: &Record) -> Result<Observation, ResourceError> {
        // Nothing of these kinds can have been created by this version.
        Ok(Observation::Ok)
    }

    async fn apply(
        &self,
        _ctx: &Ctx,
        _desired: &Resource,
        _recorded: Option<&Record>,
    ) -> Result<serde_json::Value, ResourceError> {
        Err(ResourceError::Unsupported(self.kind))
    }

    async fn destroy(&self, _ctx: &Ctx, _recorded: &Record) -> Result<(), ResourceError> {
        Err(ResourceError::Unsupported(self.kind))
    }
}
