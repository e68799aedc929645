//! Guest networking at boot: `lo` up, `eth0` address and up, default route via the gateway.
//! Classic socket ioctls: the guest has no `ip` binary and needs nothing more.

use std::net::Ipv4Addr;

use super::{log, Params};

pub fn configure(p: &Params) {
    if let Err(e) = up("lo") {
        log(format!("cannot bring lo up: {e}"));
    }
    let Some((ip, prefix)) = p.ip else { return };
    let steps = || -> std::io::Result<()> {
        set_ipv4("eth0", ip, prefix)?;
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

/// Set `dev`'s (primary) IPv4 address and netmask.
pub(crate) fn set_ipv4(dev: &str, ip: Ipv4Addr, prefix: u8) -> std::io::Result<()> {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    set_addr(dev, libc::SIOCSIFADDR, ip)?;
    set_addr(dev, libc::SIOCSIFNETMASK, Ipv4Addr::from(mask))
}

/// Take `dev` down (its routes go with it; its addresses stay).
pub(crate) fn down(dev: &str) -> std::io::Result<()> {
    let mut r = ifreq(dev);
    ioctl(libc::SIOCGIFFLAGS, &mut r)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        r.ifr_ifru.ifru_flags &= !(libc::IFF_UP as libc::c_short);
    }
    ioctl(libc::SIOCSIFFLAGS, &mut r)
}

/// Set `dev`'s Ethernet address (down, or up if its driver allows a live change).
pub(crate) fn set_mac(dev: &str, mac: [u8; 6]) -> std::io::Result<()> {
    let mut r = ifreq(dev);
    // SAFETY: sockaddr is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in sa.sa_data.iter_mut().zip(mac) {
        *d = s as libc::c_char;
    }
    r.ifr_ifru.ifru_hwaddr = sa;
    ioctl(libc::SIOCSIFHWADDR, &mut r)
}

/// Remove every IPv4 address of `dev`: RTM_DELADDR naming only the interface deletes its
/// first address (the kernel matches no attributes), repeated until none is left.
pub(crate) fn flush_ipv4(dev: &str) -> std::io::Result<()> {
    let mut r = ifreq(dev);
    ioctl(libc::SIOCGIFINDEX, &mut r)?;
    // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
    let index = unsafe { r.ifr_ifru.ifru_ifindex } as u32;
    // SAFETY: plain socket(2) call; the result is checked and wrapped in an OwnedFd at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own exclusively.
    let s: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&s);
    for seq in 1..=256u32 {
        // nlmsghdr (16 bytes) + ifaddrmsg (8 bytes), native endian.
        let mut m = Vec::with_capacity(24);
        m.extend_from_slice(&24u32.to_ne_bytes());
        m.extend_from_slice(&libc::RTM_DELADDR.to_ne_bytes());
        m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        m.extend_from_slice(&index.to_ne_bytes());
        // SAFETY: `m` is a valid buffer of m.len() bytes; the kernel is the destination.
        if unsafe { libc::send(raw, m.as_ptr().cast(), m.len(), 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = [0u8; 1024];
        // SAFETY: `buf` is writable for buf.len() bytes.
        let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The ack: an NLMSG_ERROR whose i32 after the header is 0 or -errno.
        if n < 20 || u16::from_ne_bytes([buf[4], buf[5]]) != libc::NLMSG_ERROR as u16 {
            return Err(std::io::Error::other("unexpected netlink reply"));
        }
        let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        match -code {
            0 => continue,
            libc::EADDRNOTAVAIL => return Ok(()),
            e => return Err(std::io::Error::from_raw_os_error(e)),
        }
    }
    Err(std::io::Error::other("more than 256 addresses"))
}

/// Delete every default route, then add one via `gw`.
pub(crate) fn replace_default_route(gw: Ipv4Addr) -> std::io::Result<()> {
    for _ in 0..64 {
        // SAFETY: rtentry is plain old data; all-zero is a valid value.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_flags = libc::RTF_UP;
        match ioctl(libc::SIOCDELRT, &mut rt) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => break,
            Err(e) => return Err(e),
        }
    }
    default_route(gw)
}

fn set_addr(dev: &str, req: libc::c_ulong, a: Ipv4Addr) -> std::io::Result<()> {
    let mut r = ifreq(dev);
    r.ifr_ifru.ifru_addr = sockaddr(a);
    ioctl(req, &mut r)
}

pub(crate) fn up(dev: &str) -> std::io::Result<()> {
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
