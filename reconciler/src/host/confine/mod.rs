//! Confining VMMs: the uid range VMs get their uids from (and the host's own users, which it
//! must not overlap), the file ownership a VM's uid needs (its run dir and drives; the kernel
//! readable; nothing else of the state dir), and the seccomp deny-list (`seccomp.rs`).

pub mod files;
pub mod seccomp;

use std::collections::BTreeSet;

/// systemd's "unused" block of the UIDS-GIDS document (2000000000–2147483646): no
/// distribution or systemd component allocates from it.
pub const DEFAULT_UID_RANGE: (u32, u32) = (2_000_000_000, 2_000_065_535);

/// Pure: `"FIRST-LAST"` → the inclusive range, refusing a malformed, empty or root range.
pub fn parse_uid_range(s: &str) -> Result<(u32, u32), String> {
    let bad = || {
        format!("invalid uid_range `{s}`: expected FIRST-LAST, two uids (e.g. \"2000000000-2000065535\")")
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let first: u32 = a.trim().parse().map_err(|_| bad())?;
    let last: u32 = b.trim().parse().map_err(|_| bad())?;
    if first > last {
        return Err(format!(
            "invalid uid_range `{s}`: it is empty ({first} is greater than {last})"
        ));
    }
    if first == 0 {
        return Err(format!(
            "invalid uid_range `{s}`: it includes uid 0 (root); VMs must run unprivileged"
        ));
    }
    // 4294967295 is (uid_t)-1, "no change" to setuid(2); 65534 is nobody.
    if last == u32::MAX {
        return Err(format!(
            "invalid uid_range `{s}`: 4294967295 is not a usable uid"
        ));
    }
    Ok((first, last))
}

/// Pure: `(name, uid)` of each line of an /etc/passwd (or the gid of /etc/group) text.
pub fn id_entries(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            Some((name.to_string(), id))
        })
        .collect()
}

/// Pure: the users of `passwd` whose uid falls in `range`, as `name (uid)`.
pub fn users_in(passwd: &str, (first, last): (u32, u32)) -> Vec<String> {
    id_entries(passwd)
        .into_iter()
        .filter(|(_, u)| (first..=last).contains(u))
        .map(|(n, u)| format!("{n} ({u})"))
        .collect()
}

/// Every uid and gid number the host uses now: users, groups, and the credentials of
/// running processes (another fort state dir's VMs hold uids no record here knows).
pub fn host_ids() -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    for f in ["/etc/passwd", "/etc/group"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        ids.extend(id_entries(&text).into_iter().map(|(_, id)| id));
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let name = e.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
                continue;
            };
            ids.extend(status_ids(&status));
        }
    }
    ids
}

/// Pure: the real, effective, saved and filesystem uids and gids of a /proc/PID/status.
pub fn status_ids(status: &str) -> Vec<u32> {
    status
        .lines()
        .filter_map(|l| l.strip_prefix("Uid:").or_else(|| l.strip_prefix("Gid:")))
        .flat_map(|rest| rest.split_whitespace().filter_map(|n| n.parse().ok()))
        .collect()
}

/// Whether VMs are confined by this fort: it must be root (only root can hand a process
/// another uid), and `FORT_CONFINE=0` turns it off for benchmarks and debugging.
pub fn enabled() -> bool {
    rustix::process::geteuid().is_root() && std::env::var("FORT_CONFINE").as_deref() != Ok("0")
}

/// The owner group of `/dev/kvm`, when it lets its group read and write and is not root's
/// (handing a VM gid 0 would open every root-group file to it).
pub fn kvm_group() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/dev/kvm").ok()?;
    (m.gid() != 0 && m.mode() & 0o060 == 0o060).then_some(m.gid())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn uid_ranges() {
        assert_eq!(
            parse_uid_range("2000000000-2000065535"),
            Ok(DEFAULT_UID_RANGE)
        );
        assert_eq!(parse_uid_range("5-5"), Ok((5, 5)));
        assert_eq!(
            parse_uid_range("0-10").unwrap_err(),
            "invalid uid_range `0-10`: it includes uid 0 (root); VMs must run unprivileged"
        );
        assert_eq!(
            parse_uid_range("10-5").unwrap_err(),
            "invalid uid_range `10-5`: it is empty (10 is greater than 5)"
        );
        assert!(parse_uid_range("abc")
            .unwrap_err()
            .starts_with("invalid uid_range `abc`: expected FIRST-LAST"));
        assert!(parse_uid_range("1-99999999999").is_err());
    }

    #[test]
    fn passwd_and_status_parsing() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# c\ndaemon:x:1:1::/:/bin/false\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(users_in(passwd, (1, 999)), ["daemon (1)"]);
        assert!(users_in(passwd, (2000, 3000)).is_empty());
        let status =
            "Name:\tqemu\nUid:\t2000000001\t2000000001\t2000000001\t2000000001\nGid:\t7\t7\t7\t7\n";
        assert_eq!(
            status_ids(status),
            [2000000001, 2000000001, 2000000001, 2000000001, 7, 7, 7, 7]
        );
    }
}
