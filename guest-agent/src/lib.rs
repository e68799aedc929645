//! fort's guest agent as a library: protocol (`rpc`), connections (`server`), tools, raw
//! tunnels for port forwarding (`tunnel`) and init.
//!
//! The binary (`main.rs`) is the command line around it; the library exists so that fuzz
//! targets and tests can drive request handling directly, without a socket or a VM.

pub mod hello;
pub mod identity;
pub mod image;
pub mod init;
pub mod process;
pub mod rpc;
pub mod server;
pub mod splice;
pub mod tools;
pub mod tunnel;
