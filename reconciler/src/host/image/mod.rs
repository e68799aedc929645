//! Building template images (issue 4): unpacking root filesystem tarballs safely. Building the
//! ext4 image and wiring it to the template kind come next.

pub mod build;
pub mod clone;
pub mod unpack;
