//! TAP devices the way a VMM uses them: persistent TAPs created with `TUNSETIFF` +
//! `TUNSETPERSIST` (so they outlive fort and the VMM opens them by name), and opening a TAP's
//! queue to exchange frames (the VMM's side; tests use it to prove the bridge path).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use super::NetError;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn attach(name: &str) -> Result<File, NetError> {
    if name.is_empty() || name.len() > 15 || name.contains('\0') {
        return Err(NetError::Name(name.to_string()));
    }
    let dev = Path::new("/dev/net/tun");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| NetError::io("cannot open", dev, e))?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and may update) a `struct ifreq`, which `IfReq` mirrors in
    // layout and size (40 bytes); `req` lives across the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(NetError::Io {
            what: "cannot attach to TAP",
            path: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(f)
}

/// Create the persistent TAP `name` (or do nothing if it exists as a TAP).
pub fn create_persistent(name: &str) -> Result<(), NetError> {
    let f = attach(name)?;
    // SAFETY: TUNSETPERSIST takes an integer argument by value.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) };
    if r < 0 {
        return Err(NetError::Io {
            what: "cannot make persistent the TAP",
            path: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Open a queue of the TAP `name` to read and write Ethernet frames (what a VMM does).
pub fn open(name: &str) -> Result<File, NetError> {
    attach(name)
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);
