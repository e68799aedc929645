//! fort's own clone of a followed repository (`state_dir/git/`): fetching a branch with gix
//! (`fetch.rs`), materializing a commit's tree atomically (`checkout.rs`) and the hook that
//! may refuse a fetched commit before it is checked out (`verify.rs`).
//!
//! gix does everything here; nothing shells out to `git`.

pub mod checkout;
pub mod fetch;
pub mod verify;

use std::path::PathBuf;

pub use checkout::{checkout, point_current, prune_checkouts};
pub use fetch::{redact, Mirror};
pub use verify::{verify, Trust};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot open fort's clone {}: {message}", path.display())]
    Open { path: PathBuf, message: String },
    #[error("cannot fetch {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("branch '{branch}' does not exist at {url} (it has: {})", if available.is_empty() { "no branches".to_string() } else { available.join(", ") })]
    NoBranch {
        url: String,
        branch: String,
        available: Vec<String>,
    },
    #[error("commit {id}: {message}")]
    Object { id: String, message: String },
    #[error("cannot check out commit {id} into {}", path.display())]
    Checkout {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// gix errors carry a chain of causes; the message shows each distinct one once.
pub(crate) fn describe(e: &gix::Error) -> String {
    let mut out: Vec<String> = Vec::new();
    for err in e.iter_errors() {
        let m = err.to_string();
        if !m.is_empty() && !out.iter().any(|o| o.contains(&m)) {
            out.push(m);
        }
    }
    if out.is_empty() {
        e.to_string()
    } else {
        out.join(": ")
    }
}
