//! Data drives mounted where the manifest says (`fort.mount=` kernel parameters): finding each
//! disk by its serial (else by its place in the VM's drive list), checking it holds ext4,
//! creating the mount point, mounting it, and keeping a report per drive — a drive that
//! fails to mount is reported to the host (`initialize`), never silently skipped.
//!
//! The same [`mount_all`] serves both agent modes: as PID 1 (nothing else mounts anything)
//! and as a service of the distro's init, where it also writes the mounts into the distro's
//! `/etc/fstab` (lines marked `# fort`) so the distro's tools (`findmnt`, `mount -a`, systemd's
//! mount units) see them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::mount::{mount, MountFlags};
use serde::Serialize;

/// `fort.mount=DRIVE:SERIAL:DEVICE:PATH[:OPTIONS]`, e.g.
/// `fort.mount=data:fort-data:vdb:/data:ro,noatime`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountParam {
    /// The manifest's drive name (for reports).
    pub drive: String,
    /// The virtio-blk serial the host gave the disk (QEMU).
    pub serial: String,
    /// The disk's name when the VMM gives no serial (Firecracker): vdb, vdc, … by order.
    pub device: String,
    pub path: String,
    pub options: Option<String>,
}

impl MountParam {
    pub fn parse(v: &str) -> Result<MountParam, String> {
        let mut parts = v.splitn(5, ':');
        let mut next = || parts.next().filter(|s| !s.is_empty());
        let (Some(drive), Some(serial), Some(device), Some(path)) =
            (next(), next(), next(), next())
        else {
            return Err(format!(
                "fort.mount={v}: expected DRIVE:SERIAL:DEVICE:PATH[:OPTIONS]"
            ));
        };
        if !path.starts_with('/') || path == "/" {
            return Err(format!(
                "fort.mount={v}: the mount point must be an absolute path other than /"
            ));
        }
        if device.contains('/') || device.starts_with('.') {
            return Err(format!("fort.mount={v}: bad device name `{device}`"));
        }
        Ok(MountParam {
            drive: drive.to_string(),
            serial: serial.to_string(),
            device: device.to_string(),
            path: path.to_string(),
            options: next().map(str::to_string),
        })
    }
}

/// What happened to one drive, as the host sees it (`initialize` → `_meta["fort/mounts"]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountReport {
    pub drive: String,
    pub path: String,
    /// The disk it was found as (`/dev/vdb`), if it was found.
    pub device: Option<String>,
    pub options: Option<String>,
    pub mounted: bool,
    /// Why it is not mounted.
    pub error: Option<String>,
    /// The filesystem's UUID (what the fstab line names it by).
    #[serde(skip)]
    pub uuid: Option<String>,
}

/// Reports of this boot's mounts, for every connection's `initialize`.
static REPORTS: Mutex<Vec<MountReport>> = Mutex::new(Vec::new());

/// The reports [`mount_all`] kept.
pub fn reports() -> Vec<MountReport> {
    REPORTS.lock().map(|r| r.clone()).unwrap_or_default()
}

/// How long to wait for a disk that has not appeared yet (virtio probing is normally done
/// before the agent starts; a loaded host can make it late).
const DEVICE_WAIT: Duration = Duration::from_secs(5);

/// Mount every `fort.mount` drive (parents before children), keep and return the reports. With
/// `fstab` (distro mode), the distro's fstab gets a `# fort` line per mounted drive and loses
/// the `# fort` lines of earlier boots.
pub fn mount_all(params: &super::Params, fstab: Option<&Path>) -> Vec<MountReport> {
    let mut order: Vec<&MountParam> = params.mounts.iter().collect();
    order.sort_by_key(|m| m.path.matches('/').count());
    let mut reports: Vec<MountReport> = order.into_iter().map(mount_one).collect();
    reports.extend(params.bad_mounts.iter().map(|(v, e)| {
        let field = |i: usize| v.split(':').nth(i).unwrap_or("?").to_string();
        MountReport {
            drive: field(0),
            path: field(3),
            device: None,
            options: None,
            mounted: false,
            error: Some(e.clone()),
            uuid: None,
        }
    }));
    for r in &reports {
        match &r.error {
            None => super::log(format!(
                "mounted drive {} ({}) on {}",
                r.drive,
                r.device.as_deref().unwrap_or("?"),
                r.path
            )),
            Some(e) => super::log(format!("drive {} not mounted on {}: {e}", r.drive, r.path)),
        }
    }
    if let Some(f) = fstab {
        let old = std::fs::read_to_string(f).unwrap_or_default();
        if let Err(e) = std::fs::write(f, fstab_text(&old, &reports)) {
            super::log(format!("cannot write {}: {e}", f.display()));
        }
    }
    if let Ok(mut g) = REPORTS.lock() {
        *g = reports.clone();
    }
    reports
}

fn mount_one(m: &MountParam) -> MountReport {
    let mut r = MountReport {
        drive: m.drive.clone(),
        path: m.path.clone(),
        device: None,
        options: m.options.clone(),
        mounted: false,
        error: None,
        uuid: None,
    };
    match try_mount(m, &mut r) {
        Ok(()) => r.mounted = true,
        Err(e) => r.error = Some(e),
    }
    r
}

fn try_mount(m: &MountParam, r: &mut MountReport) -> Result<(), String> {
    let dev = find_disk(Path::new("/sys/block"), m, DEVICE_WAIT)?;
    let node = PathBuf::from("/dev").join(&dev);
    r.device = Some(node.display().to_string());
    r.uuid = Some(ext4_uuid(&node)?);
    match mounted_at(&m.path) {
        // The distro's fstab (our `# fort` line of an earlier boot) mounted it already.
        Some(src) if Path::new(&src) == node => return Ok(()),
        Some(src) => return Err(format!("{} is already a mount point (of {src})", m.path)),
        None => {}
    }
    std::fs::create_dir_all(&m.path)
        .map_err(|e| format!("cannot create the mount point {}: {e}", m.path))?;
    let (flags, data) = split_options(m.options.as_deref().unwrap_or(""));
    mount(&node, m.path.as_str(), "ext4", flags, data.as_str())
        .map_err(|e| format!("cannot mount {} on {} as ext4: {e}", node.display(), m.path))
}

/// The disk (`vdb`) whose serial is `m.serial`; else `m.device` if that disk has no serial
/// (Firecracker). A disk with another serial is never taken for it.
pub fn find_disk(sys_block: &Path, m: &MountParam, wait: Duration) -> Result<String, String> {
    let deadline = Instant::now() + wait;
    loop {
        let mut by_order = None;
        if let Ok(rd) = std::fs::read_dir(sys_block) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let serial = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
                let serial = serial.trim_end_matches(['\n', '\0']);
                if serial == m.serial {
                    return Ok(name);
                }
                if name == m.device {
                    by_order = Some(serial.to_string());
                }
            }
        }
        match by_order {
            Some(s) if s.is_empty() => return Ok(m.device.clone()),
            Some(s) if Instant::now() >= deadline => {
                return Err(format!(
                    "no disk has serial {}, and {} has serial {s}: not taking it for drive {}",
                    m.serial, m.device, m.drive
                ))
            }
            None if Instant::now() >= deadline => {
                return Err(format!(
                    "no disk has serial {} and there is no {} (is the drive attached?)",
                    m.serial, m.device
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The UUID of the ext4 filesystem on `dev`, or why it holds none (fort formats empty drives
/// ext4; anything else is reported rather than handed to mount(2), whose EINVAL says little).
pub fn ext4_uuid(dev: &Path) -> Result<String, String> {
    let mut sb = [0u8; 2048];
    std::fs::File::open(dev)
        .and_then(|mut f| f.read_exact(&mut sb))
        .map_err(|e| format!("cannot read {}: {e}", dev.display()))?;
    // The superblock is at byte 1024: s_magic (0xEF53, little-endian) at +0x38, s_uuid at +0x68.
    if sb[1024 + 0x38..1024 + 0x3a] != [0x53, 0xef] {
        return Err(format!(
            "{} holds no ext4 filesystem (no ext4 superblock magic at byte 1080)",
            dev.display()
        ));
    }
    let u = &sb[1024 + 0x68..1024 + 0x78];
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// The source of what is mounted at `path`, if anything.
fn mounted_at(path: &str) -> Option<String> {
    let t = std::fs::read_to_string("/proc/mounts").ok()?;
    t.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (src, target) = (f.next()?, f.next()?);
        (target == path).then(|| src.to_string())
    })
}

/// Mount options → the flags mount(2) takes and the rest as ext4's data string.
pub fn split_options(opts: &str) -> (MountFlags, String) {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => flags |= MountFlags::RDONLY,
            "rw" | "defaults" => {}
            "noatime" => flags |= MountFlags::NOATIME,
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "strictatime" => flags |= MountFlags::STRICTATIME,
            "lazytime" => flags |= MountFlags::LAZYTIME,
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            "dirsync" => flags |= MountFlags::DIRSYNC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// `/etc/fstab` with the `# fort` lines of earlier boots replaced by one per mounted drive
/// (`nofail`, so the distro boots even when a drive is gone; pass 0: the agent mounted it).
pub fn fstab_text(old: &str, reports: &[MountReport]) -> String {
    let mut out: String = old
        .lines()
        .filter(|l| !l.trim_end().ends_with("# fort"))
        .map(|l| format!("{l}\n"))
        .collect();
    for r in reports.iter().filter(|r| r.mounted) {
        let Some(uuid) = &r.uuid else { continue };
        let opts = match r.options.as_deref() {
            Some(o) => format!("{o},nofail"),
            None => "defaults,nofail".to_string(),
        };
        out.push_str(&format!("UUID={uuid} {} ext4 {opts} 0 0 # fort\n", r.path));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parameters_parse_or_say_what_is_wrong() {
        assert_eq!(
            MountParam::parse("data:fort-data:vdb:/data:ro,noatime"),
            Ok(MountParam {
                drive: "data".into(),
                serial: "fort-data".into(),
                device: "vdb".into(),
                path: "/data".into(),
                options: Some("ro,noatime".into()),
            })
        );
        assert_eq!(
            MountParam::parse("d:s:vdc:/srv/x").map(|m| m.options),
            Ok(None)
        );
        for (bad, want) in [
            (
                "data:fort-data:vdb",
                "fort.mount=data:fort-data:vdb: expected DRIVE:SERIAL:DEVICE:PATH[:OPTIONS]",
            ),
            (
                "data::vdb:/data",
                "fort.mount=data::vdb:/data: expected DRIVE:SERIAL:DEVICE:PATH[:OPTIONS]",
            ),
            (
                "data:s:vdb:data",
                "fort.mount=data:s:vdb:data: the mount point must be an absolute path other than /",
            ),
            (
                "data:s:vdb:/",
                "fort.mount=data:s:vdb:/: the mount point must be an absolute path other than /",
            ),
            (
                "data:s:../sda:/d",
                "fort.mount=data:s:../sda:/d: bad device name `../sda`",
            ),
        ] {
            assert_eq!(MountParam::parse(bad), Err(want.to_string()), "{bad}");
        }
    }

    #[test]
    fn a_parameter_that_does_not_parse_is_reported_not_dropped() {
        let p = super::super::Params::parse("fort.mount=data:fort-data:vdb");
        let r = mount_all(&p, None);
        assert_eq!(
            r,
            [MountReport {
                drive: "data".into(),
                path: "?".into(),
                device: None,
                options: None,
                mounted: false,
                error: Some(
                    "fort.mount=data:fort-data:vdb: expected DRIVE:SERIAL:DEVICE:PATH[:OPTIONS]"
                        .into()
                ),
                uuid: None,
            }]
        );
        assert_eq!(reports(), r);
    }

    #[test]
    fn options_split_into_flags_and_ext4_data() {
        let (f, d) = split_options("ro,noatime,errors=remount-ro,commit=30");
        assert_eq!(f, MountFlags::RDONLY | MountFlags::NOATIME);
        assert_eq!(d, "errors=remount-ro,commit=30");
        assert_eq!(split_options(""), (MountFlags::empty(), String::new()));
    }

    fn sys_block(disks: &[(&str, Option<&str>)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (name, serial) in disks {
            std::fs::create_dir(t.path().join(name)).unwrap();
            if let Some(s) = serial {
                std::fs::write(t.path().join(name).join("serial"), s).unwrap();
            }
        }
        t
    }

    #[test]
    fn disks_are_found_by_serial_else_by_order_never_by_a_wrong_serial() {
        let m = MountParam::parse("data:fort-data:vdb:/data").unwrap();
        let none = Duration::ZERO;
        // QEMU: by serial, wherever the disk landed.
        let t = sys_block(&[
            ("vda", Some("")),
            ("vdb", Some("fort-scratch")),
            ("vdc", Some("fort-data\n")),
        ]);
        assert_eq!(find_disk(t.path(), &m, none), Ok("vdc".into()));
        // Firecracker: no serials, by order.
        let t = sys_block(&[("vda", None), ("vdb", None)]);
        assert_eq!(find_disk(t.path(), &m, none), Ok("vdb".into()));
        let t = sys_block(&[("vda", Some("")), ("vdb", Some("fort-other"))]);
        assert_eq!(
            find_disk(t.path(), &m, none),
            Err("no disk has serial fort-data, and vdb has serial fort-other: not taking it for drive data".into())
        );
        let t = sys_block(&[("vda", None)]);
        assert_eq!(
            find_disk(t.path(), &m, none),
            Err("no disk has serial fort-data and there is no vdb (is the drive attached?)".into())
        );
    }

    #[test]
    fn ext4_is_recognised_by_its_superblock() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("d.img");
        let mut b = vec![0u8; 4096];
        b[1024 + 0x38] = 0x53;
        b[1024 + 0x39] = 0xef;
        for (i, x) in b[1024 + 0x68..1024 + 0x78].iter_mut().enumerate() {
            *x = i as u8;
        }
        std::fs::write(&img, &b).unwrap();
        assert_eq!(
            ext4_uuid(&img),
            Ok("00010203-0405-0607-0809-0a0b0c0d0e0f".into())
        );
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        assert_eq!(
            ext4_uuid(&img),
            Err(format!(
                "{} holds no ext4 filesystem (no ext4 superblock magic at byte 1080)",
                img.display()
            ))
        );
    }

    #[test]
    fn fstab_keeps_the_distro_lines_and_replaces_forts() {
        let old = "# /etc/fstab\nproc /proc proc defaults 0 0\nUUID=old /gone ext4 defaults,nofail 0 0 # fort\n";
        let r = |path: &str, options: Option<&str>, mounted: bool| MountReport {
            drive: "d".into(),
            path: path.into(),
            device: Some("/dev/vdb".into()),
            options: options.map(str::to_string),
            mounted,
            error: (!mounted).then(|| "no".into()),
            uuid: Some("u-1".into()),
        };
        assert_eq!(
            fstab_text(
                old,
                &[
                    r("/data", Some("ro"), true),
                    r("/srv", None, true),
                    r("/bad", None, false)
                ]
            ),
            "# /etc/fstab\nproc /proc proc defaults 0 0\n\
             UUID=u-1 /data ext4 ro,nofail 0 0 # fort\n\
             UUID=u-1 /srv ext4 defaults,nofail 0 0 # fort\n"
        );
    }
}
