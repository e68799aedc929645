//! The only code that touches the host: downloads, files, and (later) images, netlink, VMMs.

pub mod agent;
pub mod fetch;
pub mod image;
pub mod net;
pub mod vmm;
