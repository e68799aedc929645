//! What fort left on the host, read without fort (with `ip`, `nft`, SQLite, /proc and the
//! filesystem), so leak checks do not trust the code they check.

use std::collections::BTreeSet;
use std::path::Path;

/// PIDs of live processes whose command line names `dir`.
pub fn processes_of(dir: &Path) -> BTreeSet<u32> {
    let needle = dir.display().to_string();
    let mut out = BTreeSet::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rfind(')')
            .is_some_and(|i| stat[i + 2..].starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmd).contains(&needle) {
            out.insert(pid);
        }
    }
    out
}

/// Interfaces whose alias says fort made them (read with iproute2, not fort's own code).
pub fn fort_links() -> BTreeSet<String> {
    let out = std::process::Command::new("ip")
        .args(["-j", "link", "show"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            l["ifalias"]
                .as_str()
                .is_some_and(|a| a.starts_with("fort:"))
        })
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

/// fort's nftables tables (read with nft, not fort's own code).
pub fn fort_tables() -> BTreeSet<String> {
    let out = std::process::Command::new("nft")
        .args(["-j", "list", "tables"])
        .output()
        .expect("nft (Debian package nftables; scripts/install-deps installs it)");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["table"]["name"].as_str())
        .filter(|n| n.starts_with("fort-"))
        .map(String::from)
        .collect()
}

pub fn leases(state: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open_with_flags(
        state.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut q = c
        .prepare("SELECT owner FROM leases ORDER BY owner")
        .unwrap();
    q.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The VMs holding a uid in state.
pub fn uids(state: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open_with_flags(
        state.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut q = c.prepare("SELECT owner FROM uids ORDER BY owner").unwrap();
    q.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The VM cgroups of this state dir, in every hierarchy (`vm-a` once per mount).
pub fn cgroups(state: &Path) -> Vec<String> {
    let Some(h) = fort::host::cgroup::detect() else {
        return Vec::new();
    };
    h.state_dirs(&fort::resources::state_id(state))
        .iter()
        .flat_map(|d| {
            names(d)
                .into_iter()
                .filter(|n| n.starts_with("vm-"))
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Block count × block size of an ext4 image, as dumpe2fs reads them.
pub fn ext4_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("dumpe2fs")
        .arg("-h")
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .unwrap()
            .parse()
            .unwrap()
    };
    field("Block count:") * field("Block size:")
}

pub fn ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .unwrap()
        .trim()
        .to_string()
}
