//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod assets;
pub mod fort;
pub mod git_http;
pub mod gitrepo;
pub mod host_mcp;
pub mod leaks;
pub mod manifests;
pub mod netns;
pub mod oci_image;
pub mod pty;
pub mod registry;
pub mod rootfs;
pub mod server;
pub mod vms;
pub mod watch_proc;
