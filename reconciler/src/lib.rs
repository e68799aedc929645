//! fort: turn a Linux host into a fleet of Firecracker microVMs described in git.
//!
//! Pure modules (`manifest`, `graph`, `plan`, `diff`) never touch the host (`gitread` only
//! reads a local repository's objects); `host/` is the only code
//! that does, and `resources/` binds each kind's observe/plan/apply/destroy to it.

pub mod address;
pub mod allocator;
pub mod apply;
pub mod cli;
pub mod commit_trust;
pub mod crash;
pub mod diff;
pub mod fleet;
pub mod gitops;
pub mod gitread;
pub mod graph;
pub mod host;
pub mod manifest;
pub mod orphans;
pub mod plan;
pub mod resources;
pub mod sandbox;
pub mod state;
pub mod watch;

pub use address::{Address, Kind};

/// This fort's version, recorded in state and plans.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
