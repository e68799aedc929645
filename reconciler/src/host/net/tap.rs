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
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn attach(name: &str) -> Result<File, NetError> {
    attach_with(name, IFF_TAP | IFF_NO_PI)
}

fn attach_with(name: &str, flags: libc::c_short) -> Result<File, NetError> {
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
        flags,
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

/// Open a queue of the TAP `name` for a VMM that gets it as a descriptor (QEMU's
/// `-netdev tap,fd=N`), with the virtio-net header QEMU uses when it opens TAPs itself. fort
/// opens it, so the VMM needs neither root nor access to `/dev/net/tun`.
pub fn open_for_vmm(name: &str) -> Result<File, NetError> {
    attach_with(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
}

/// The owner uid and gid of the TAP `name` (`None` each when unset), from sysfs.
pub fn owner(name: &str) -> (Option<u32>, Option<u32>) {
    let read = |f: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{name}/{f}"))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .and_then(|v| u32::try_from(v).ok())
    };
    (read("owner"), read("group"))
}

/// Make `uid:gid` the TAP's owner, so a VMM running as that uid may attach to it without
/// `CAP_NET_ADMIN` (`TUNSETOWNER`/`TUNSETGROUP`). The TAP must not be in use (a VMM holding it
/// makes the attach fail with "busy").
pub fn set_owner(name: &str, uid: u32, gid: u32) -> Result<(), NetError> {
    let f = attach(name)?;
    for (req, id, what) in [
        (TUNSETOWNER, uid, "cannot set the owner of the TAP"),
        (TUNSETGROUP, gid, "cannot set the group of the TAP"),
    ] {
        // SAFETY: TUNSETOWNER and TUNSETGROUP take the id as an integer argument by value.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), req, id as libc::c_ulong) };
        if r < 0 {
            return Err(NetError::Io {
                what,
                path: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);
