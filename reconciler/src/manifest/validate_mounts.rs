//! A VM's `drives` list: plain names (attached) and `{ drive, mount, options }` tables (mounted
//! by the guest agent) — mount points, options, and drives or mount points given twice.

use std::collections::BTreeMap;

use toml::Spanned;

use super::model::MountSpec;
use super::raw::{RawDataDrive, RawMount};
use super::validate::Ctx;

/// Mount points below these would hide what the agent itself mounts at boot.
const RESERVED: &[&str] = &["/proc", "/sys", "/dev"];

/// Longest mount point and option list accepted: both travel on the kernel command line.
const MAX_PATH: usize = 200;
const MAX_OPTIONS: usize = 200;

/// Check every entry's mount (if any) and that no drive or mount point appears twice.
/// Returns the mounts in manifest order, or `None` when something was reported.
pub(super) fn mounts(
    cx: &mut Ctx<'_>,
    file: usize,
    addr: &str,
    drives: &[Spanned<RawDataDrive>],
) -> Option<Vec<MountSpec>> {
    let mut ok = true;
    let mut out = Vec::new();
    let mut listed: BTreeMap<&str, ()> = BTreeMap::new();
    let mut points: BTreeMap<String, String> = BTreeMap::new();
    for d in drives {
        let name = d.get_ref().name();
        if listed.insert(name, ()).is_some() {
            cx.err(
                file,
                &d.span(),
                format!("{addr}: drive.{name} is listed twice in `drives` (a drive is attached, and mounted, once)"),
            );
            ok = false;
            continue;
        }
        let RawDataDrive::Mounted(m) = d.get_ref() else {
            continue;
        };
        match mount(cx, file, addr, m) {
            Some(spec) => {
                if let Some(other) = points.insert(spec.path.clone(), name.to_string()) {
                    cx.err(
                        file,
                        &m.mount.span(),
                        format!(
                            "{addr}: drive.{name} and drive.{other} are both mounted at {}",
                            spec.path
                        ),
                    );
                    ok = false;
                }
                out.push(spec);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn mount(cx: &mut Ctx<'_>, file: usize, addr: &str, m: &RawMount) -> Option<MountSpec> {
    let drive = m.drive.get_ref();
    let path = match normal_mount_point(m.mount.get_ref()) {
        Ok(p) => Some(p),
        Err(e) => {
            cx.err(file, &m.mount.span(), format!("{addr}: drive.{drive}: {e}"));
            None
        }
    };
    let options = match &m.options {
        None => Some(None),
        Some(o) => match check_options(o.get_ref()) {
            Ok(()) => Some(Some(o.get_ref().clone())),
            Err(e) => {
                cx.err(file, &o.span(), format!("{addr}: drive.{drive}: {e}"));
                None
            }
        },
    };
    Some(MountSpec {
        drive: drive.clone(),
        path: path?,
        options: options?,
    })
}

/// `/data/./x//` → `/data/x`; relative paths, `..`, `/`, the agent's own mounts and
/// characters the kernel command line or /etc/fstab cannot carry are refused.
pub fn normal_mount_point(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!(
            "mount point `{p}` is not an absolute path (e.g. \"/{}\")",
            p.trim_start_matches("./")
        ));
    }
    if let Some(c) = p
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@')))
    {
        return Err(format!(
            "mount point `{p}` contains {c:?}: use letters, digits and . _ - + @"
        ));
    }
    let mut parts = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("mount point `{p}` contains `..`")),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(format!(
            "mount point `{p}` is the root: the root drive is mounted there"
        ));
    }
    let normal = format!("/{}", parts.join("/"));
    if normal.len() > MAX_PATH {
        return Err(format!(
            "mount point `{p}` is longer than {MAX_PATH} characters"
        ));
    }
    if let Some(r) = RESERVED
        .iter()
        .find(|r| normal == **r || normal.starts_with(&format!("{r}/")))
    {
        return Err(format!(
            "mount point `{normal}` is inside {r}, which the guest agent mounts itself"
        ));
    }
    Ok(normal)
}

/// A comma list of `word` or `key=value` options of a-z, 0-9, `_ = . -`; `ro` with `rw` is
/// refused (which one wins would be a guess).
pub fn check_options(o: &str) -> Result<(), String> {
    if o.len() > MAX_OPTIONS {
        return Err(format!(
            "mount options are longer than {MAX_OPTIONS} characters"
        ));
    }
    let list: Vec<&str> = o.split(',').collect();
    for opt in &list {
        if opt.is_empty() {
            return Err(format!(
                "mount options `{o}` have an empty entry: write them like \"ro,noatime\""
            ));
        }
        if let Some(c) = opt.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '=' | '.' | '-'))
        }) {
            return Err(format!(
                "mount option `{opt}` contains {c:?}: options are a-z, 0-9 and _ = . -"
            ));
        }
    }
    if list.contains(&"ro") && list.contains(&"rw") {
        return Err(format!("mount options `{o}` say both ro and rw"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_normalised_or_refused_with_the_reason() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("/data", Ok("/data")),
            ("/data/", Ok("/data")),
            ("//srv/./cache//x", Ok("/srv/cache/x")),
            ("/proc-data", Ok("/proc-data")),
            (
                "data",
                Err("mount point `data` is not an absolute path (e.g. \"/data\")"),
            ),
            (
                "./data",
                Err("mount point `./data` is not an absolute path (e.g. \"/data\")"),
            ),
            (
                "/",
                Err("mount point `/` is the root: the root drive is mounted there"),
            ),
            (
                "/./",
                Err("mount point `/./` is the root: the root drive is mounted there"),
            ),
            (
                "/data/../etc",
                Err("mount point `/data/../etc` contains `..`"),
            ),
            (
                "/my data",
                Err("mount point `/my data` contains ' ': use letters, digits and . _ - + @"),
            ),
            (
                "/a:b",
                Err("mount point `/a:b` contains ':': use letters, digits and . _ - + @"),
            ),
            (
                "/proc",
                Err("mount point `/proc` is inside /proc, which the guest agent mounts itself"),
            ),
            (
                "/dev/x/",
                Err("mount point `/dev/x` is inside /dev, which the guest agent mounts itself"),
            ),
        ];
        for (input, want) in cases {
            let got = normal_mount_point(input);
            assert_eq!(got.as_deref().map_err(String::as_str), *want, "{input}");
        }
    }

    #[test]
    fn options_are_a_sane_comma_list() {
        let cases: &[(&str, Result<(), &str>)] = &[
            ("ro", Ok(())),
            ("ro,noatime", Ok(())),
            ("errors=remount-ro,commit=30", Ok(())),
            ("ro,,noatime", Err("mount options `ro,,noatime` have an empty entry: write them like \"ro,noatime\"")),
            ("", Err("mount options `` have an empty entry: write them like \"ro,noatime\"")),
            ("ro noatime", Err("mount option `ro noatime` contains ' ': options are a-z, 0-9 and _ = . -")),
            ("RO", Err("mount option `RO` contains 'R': options are a-z, 0-9 and _ = . -")),
            ("ro,rw", Err("mount options `ro,rw` say both ro and rw")),
        ];
        for (input, want) in cases {
            let got = check_options(input);
            assert_eq!(
                got.as_ref().map_err(String::as_str),
                want.as_ref().map_err(|e| *e),
                "{input}"
            );
        }
    }
}

#[cfg(test)]
mod naming_tests {
    use crate::manifest::{data_drive_device, drive_serial};

    #[test]
    fn serials_fit_virtio_and_devices_follow_linux_naming() {
        assert_eq!(drive_serial("data"), "fort-data");
        assert_eq!(drive_serial("fifteen-chars-x"), "fort-fifteen-chars-x");
        let long = drive_serial("sixteen-chars-xy");
        assert_eq!(long.len(), 20, "{long}");
        assert!(long.starts_with("fort-sixtee-"), "{long}");
        assert_ne!(long, drive_serial("sixteen-chars-xz"));
        let devs: Vec<String> = [0, 1, 24, 25, 26]
            .iter()
            .map(|i| data_drive_device(*i))
            .collect();
        assert_eq!(devs, ["vdb", "vdc", "vdz", "vdaa", "vdab"]);
    }
}
