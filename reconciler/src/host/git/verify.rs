//! The commit-verification hook: called with every fetched commit before it is checked out;
//! it may refuse the commit with a reason that `fort status` shows: any commit, or only
//! commits SSH-signed by a key of an `allowed_signers` file (`--allowed-signers`).

use super::Mirror;
use crate::commit_trust::AllowedSigners;
use crate::state::CommitInfo;

/// Which commits may be applied.
#[derive(Debug, Clone, Default)]
pub enum Trust {
    /// Any commit of the followed branch (the repository's access control is the trust).
    #[default]
    Any,
    /// Commits with a good SSH signature by a key of this `allowed_signers` file.
    Signed(Box<AllowedSigners>),
}

/// `Ok` to apply `commit`, or the reason it is refused (shown in `fort status`).
pub fn verify(trust: &Trust, mirror: &Mirror, commit: &CommitInfo) -> Result<(), String> {
    match trust {
        Trust::Any => Ok(()),
        Trust::Signed(signers) => {
            let raw = raw_commit(mirror, &commit.id)?;
            let signer = signers
                .verify(&commit.id, &raw)
                .map_err(|e| format!("{e}; not applied"))?;
            tracing::info!(
                "commit {}: good signature by {} ({})",
                crate::gitops::short(&commit.id),
                signer.principals,
                signer.fingerprint
            );
            Ok(())
        }
    }
}

/// The commit object's bytes as stored (what its signature covers, with the `gpgsig` header).
fn raw_commit(mirror: &Mirror, id: &str) -> Result<Vec<u8>, String> {
    let oid = gix::ObjectId::from_hex(id.as_bytes())
        .map_err(|e| format!("commit {id}: not an object id: {e}"))?;
    let object = mirror
        .repo()
        .find_object(oid)
        .map_err(|e| format!("commit {id}: cannot read it from fort's clone: {e}"))?;
    Ok(object.data.clone())
}
