//! The manifest: parse `fort.toml` files (spans kept), validate, and resolve to [`Manifest`].

pub mod model;

pub use model::*;
