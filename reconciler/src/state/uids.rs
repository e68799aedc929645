//! The uid each VM's processes run as (the gid is the same number): allocated once per VM
//! from `[fort] uid_range`, kept across restarts and re-applies, released on destroy. A uid
//! the host already uses (a user or group, or a running process, which may belong to another
//! fort state dir on the same host) is skipped.

use rusqlite::{params, OptionalExtension};

use super::{now_ms, SqliteStore, StateError};

/// A uid held by a VM (or by a resource nobody records any more: a leftover).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UidLease {
    pub owner: String,
    pub uid: u32,
}

impl SqliteStore {
    /// The uid of `owner`, allocating the lowest free one of `first..=last` on first use;
    /// `in_use` says whether the host already uses a uid (or gid) number.
    pub fn uid(
        &self,
        owner: &str,
        (first, last): (u32, u32),
        in_use: &dyn Fn(u32) -> bool,
    ) -> Result<u32, StateError> {
        let tx = self.conn.unchecked_transaction()?;
        let existing: Option<u32> = tx
            .query_row("SELECT uid FROM uids WHERE owner = ?1", [owner], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(uid) = existing {
            return Ok(uid);
        }
        let held: std::collections::BTreeSet<u32> = {
            let mut q = tx.prepare("SELECT uid FROM uids WHERE uid BETWEEN ?1 AND ?2")?;
            let rows = q.query_map(params![first, last], |r| r.get::<_, u32>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let uid = (first..=last)
            .find(|u| !held.contains(u) && !in_use(*u))
            .ok_or_else(|| StateError::NoUid {
                owner: owner.into(),
                first,
                last,
            })?;
        tx.execute(
            "INSERT INTO uids(owner, uid, created_at) VALUES (?1, ?2, ?3)",
            params![owner, uid, now_ms()],
        )?;
        tx.commit()?;
        Ok(uid)
    }

    /// The uid recorded for `owner`, without allocating.
    pub fn uid_of(&self, owner: &str) -> Result<Option<u32>, StateError> {
        Ok(self
            .conn
            .query_row("SELECT uid FROM uids WHERE owner = ?1", [owner], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Give the uid back; releasing twice is fine.
    pub fn release_uid(&self, owner: &str) -> Result<(), StateError> {
        self.conn
            .execute("DELETE FROM uids WHERE owner = ?1", [owner])?;
        Ok(())
    }

    /// Every allocated uid.
    pub fn uids(&self) -> Result<Vec<UidLease>, StateError> {
        self.uids_where("")
    }

    /// The uids whose owner has no resource row (what the orphan scan reports).
    pub fn unowned_uids(&self) -> Result<Vec<UidLease>, StateError> {
        self.uids_where("WHERE owner NOT IN (SELECT address FROM resources)")
    }

    fn uids_where(&self, filter: &str) -> Result<Vec<UidLease>, StateError> {
        // A state database opened read-only before its first apply (in memory) has the table
        // too: `prepare` migrates every writable connection.
        let mut q = self.conn.prepare(&format!(
            "SELECT owner, uid FROM uids {filter} ORDER BY uid"
        ))?;
        let rows = q.query_map([], |r| {
            Ok(UidLease {
                owner: r.get(0)?,
                uid: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn uids_are_stable_unique_skip_the_hosts_and_are_released() {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(d.path()).unwrap();
        let range = (1000, 1003);
        let host = |u: u32| u == 1000;
        assert_eq!(s.uid("vm.a", range, &host).unwrap(), 1001);
        assert_eq!(s.uid("vm.b", range, &host).unwrap(), 1002);
        drop(s);
        let s = SqliteStore::open(d.path()).unwrap();
        assert_eq!(s.uid("vm.a", range, &host).unwrap(), 1001, "stable");
        assert_eq!(s.uid("vm.c", range, &host).unwrap(), 1003);
        let err = s.uid("vm.d", range, &host).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free uid left for vm.d in uid_range 1000-1003: every uid in it is held by another VM or used on this host (set a larger `[fort] uid_range`)"
        );
        s.release_uid("vm.a").unwrap();
        s.release_uid("vm.a").unwrap();
        assert_eq!(s.uid_of("vm.a").unwrap(), None);
        assert_eq!(s.uid("vm.d", range, &host).unwrap(), 1001, "reused");
        assert_eq!(s.uids().unwrap().len(), 3);
        assert_eq!(s.unowned_uids().unwrap().len(), 3, "no resource rows here");
    }
}
