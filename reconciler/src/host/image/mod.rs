//! Template images and drive files: safe rootfs unpacking (`unpack`), the image's init
//! (`init`) and the agent installed as its service (`service`), ext4 images built with
//! `mke2fs -d` (`build`), and drive clones, empty drives and growth (`clone`).

pub mod build;
pub mod clone;
pub mod init;
pub mod service;
pub mod unpack;
