//! Guest networking at boot: `lo` up, `eth0` address and up, default route via the gateway.
//! Classic socket ioctls: the guest has no `ip` binary and needs nothing more.

use std::net::Ipv4Addr;

use super::{log, Params};

pub fn configure(p: &Params) {
    if let Err(e) = up("lo") {
        log(format!("cannot bring lo up: {e}"));
    }
    let Some((ip, prefix)) = p.ip else { return };
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    let steps = || -> std::io::Result<()> {
        set_addr("eth0", libc::SIOCSIFADDR, ip)?;
        set_addr("eth0", libc::SIOCSIFNETMASK, Ipv4Addr::from(mask))?;
        up("eth0")?;
        if let Some(gw) = p.gateway {
            default_route(gw)?;
        }
        Ok(())
    };
    if let Err(e) = steps() {
        log(format!("cannot configure eth0 as {ip}/{prefix}: {e}"));
    }
}

fn socket() -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked and wrapped in an OwnedFd at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own exclusively.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in r
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    r
}

fn sockaddr(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; this is how the ioctl API
    // expects IPv4 addresses to be passed.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl<T>(req: libc::c_ulong, arg: &mut T) -> std::io::Result<()> {
    let s = socket()?;
    // SAFETY: `arg` is a valid, exclusively borrowed struct of the type `req` expects
    // (ifreq or rtentry), and the socket is open for the duration of the call.
    let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&s), req as _, arg as *mut T) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_addr(dev: &str, req: libc::c_ulong, a: Ipv4Addr) -> std::io::Result<()> {
    let mut r = ifreq(dev);
    r.ifr_ifru.ifru_addr = sockaddr(a);
    ioctl(req, &mut r)
}

fn up(dev: &str) -> std::io::Result<()> {
    let mut r = ifreq(dev);
    ioctl(libc::SIOCGIFFLAGS, &mut r)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        r.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    ioctl(libc::SIOCSIFFLAGS, &mut r)
}

fn default_route(gw: Ipv4Addr) -> std::io::Result<()> {
    // SAFETY: rtentry is plain old data; all-zero is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr(gw);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    match ioctl(libc::SIOCADDRT, &mut rt) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}
