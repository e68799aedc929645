//! The commit-verification hook: called with every fetched commit before it is checked out;
//! it may refuse the commit with a reason that `fort status` shows. Today every commit is
//! accepted; SSH-signature trust (`--allowed-signers`) plugs in here as another [`Trust`].

use super::Mirror;
use crate::state::CommitInfo;

/// Which commits may be applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Trust {
    /// Any commit of the followed branch (the repository's access control is the trust).
    #[default]
    Any,
}

/// `Ok` to apply `commit`, or the reason it is refused (shown in `fort status`).
pub fn verify(trust: &Trust, _mirror: &Mirror, _commit: &CommitInfo) -> Result<(), String> {
    match trust {
        Trust::Any => Ok(()),
    }
}
