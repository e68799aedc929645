//! Addresses leased from networks: one IPv4 address and MAC per (network, owner), allocated
//! once, kept across restarts and re-applies, released on destroy. Pools get consecutive
//! addresses: a pool's members are placed in one free run as long as the network allows.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rusqlite::{params, OptionalExtension};

use super::{now_ms, SqliteStore, StateError};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    pub network: String,
    pub owner: String,
    pub ip: Ipv4Addr,
    pub mac: String,
}

/// Where a pool member sits: its pool's name, its index and the pool's size.
#[derive(Debug, Clone, Copy)]
pub struct PoolSlot<'a> {
    pub pool: &'a str,
    pub index: u32,
    pub count: u32,
}

/// A locally administered MAC made of the IPv4 address: unique on the host because fort's
/// networks never overlap, and stable because the address is.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:fc:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The addresses VMs may get: after the network address and the gateway, before broadcast.
fn hosts(cidr: Ipv4Net) -> (u32, u32) {
    let first = u32::from(cidr.network()) + 2;
    let last = u32::from(cidr.broadcast()) - 1;
    (first, last)
}

impl SqliteStore {
    /// The lease of `owner` on `network`, allocating it on first use.
    pub fn lease(
        &self,
        network: &str,
        cidr: Ipv4Net,
        owner: &str,
        fixed: Option<Ipv4Addr>,
        pool: Option<PoolSlot<'_>>,
    ) -> Result<Lease, StateError> {
        // One apply per state dir holds the lock, so a deferred transaction is enough.
        let tx = self.conn.unchecked_transaction()?;
        let mut held: BTreeMap<u32, String> = BTreeMap::new();
        {
            let mut q = tx.prepare("SELECT ip, owner FROM leases WHERE network = ?1")?;
            let rows = q.query_map([network], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (ip, o) = row?;
                let ip: Ipv4Addr = ip.parse().map_err(|_| StateError::Corrupt {
                    address: format!("lease of {o}"),
                    what: format!("`{ip}` is not an IPv4 address"),
                })?;
                held.insert(u32::from(ip), o);
            }
        }
        let existing: Option<String> = tx
            .query_row(
                "SELECT ip FROM leases WHERE network = ?1 AND owner = ?2",
                params![network, owner],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(ip) = existing.and_then(|s| s.parse::<Ipv4Addr>().ok()) {
            if fixed.is_none_or(|f| f == ip) {
                return Ok(Lease {
                    network: network.into(),
                    owner: owner.into(),
                    ip,
                    mac: mac_for(ip),
                });
            }
            held.remove(&u32::from(ip));
            tx.execute(
                "DELETE FROM leases WHERE network = ?1 AND owner = ?2",
                params![network, owner],
            )?;
        }
        let ip = match fixed {
            Some(f) => {
                if let Some(holder) = held.get(&u32::from(f)) {
                    return Err(StateError::Taken {
                        network: network.into(),
                        owner: owner.into(),
                        ip: f,
                        holder: holder.clone(),
                    });
                }
                f
            }
            None => pick(cidr, &held, pool).ok_or_else(|| StateError::Exhausted {
                network: network.into(),
                cidr: cidr.to_string(),
                owner: owner.into(),
            })?,
        };
        let mac = mac_for(ip);
        tx.execute(
            "INSERT INTO leases(network, owner, ip, mac, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![network, owner, ip.to_string(), mac, now_ms()],
        )?;
        tx.commit()?;
        Ok(Lease {
            network: network.into(),
            owner: owner.into(),
            ip,
            mac,
        })
    }

    /// A flag of this state dir (the `meta` table), e.g. that fort switched a sysctl on.
    pub fn flag(&self, key: &str) -> Result<bool, StateError> {
        let v: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?;
        Ok(v.as_deref() == Some("1"))
    }

    pub fn set_flag(&self, key: &str, on: bool) -> Result<(), StateError> {
        if on {
            self.conn.execute(
                "INSERT INTO meta(key, value) VALUES(?1, '1')
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key],
            )?;
        } else {
            self.conn
                .execute("DELETE FROM meta WHERE key = ?1", [key])?;
        }
        Ok(())
    }

    /// Give the address back; releasing twice is fine.
    pub fn release_lease(&self, network: &str, owner: &str) -> Result<(), StateError> {
        self.conn.execute(
            "DELETE FROM leases WHERE network = ?1 AND owner = ?2",
            params![network, owner],
        )?;
        Ok(())
    }

    pub fn leases(&self, network: &str) -> Result<Vec<Lease>, StateError> {
        self.leases_where("WHERE network = ?1", [network])
    }

    /// The leases whose owner has no resource row (what the orphan scan reports), found by
    /// SQLite rather than by a lookup per lease.
    pub fn unowned_leases(&self) -> Result<Vec<Lease>, StateError> {
        self.leases_where(
            "WHERE owner NOT IN (SELECT address FROM resources)",
            rusqlite::params![],
        )
    }

    fn leases_where<P: rusqlite::Params>(
        &self,
        filter: &str,
        params: P,
    ) -> Result<Vec<Lease>, StateError> {
        let mut q = self.conn.prepare(&format!(
            "SELECT network, owner, ip, mac FROM leases {filter} ORDER BY network, owner"
        ))?;
        let rows = q.query_map(params, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (network, owner, ip, mac) = row?;
            out.push(Lease {
                network,
                ip: ip.parse().map_err(|_| StateError::Corrupt {
                    address: format!("lease of {owner}"),
                    what: format!("`{ip}` is not an IPv4 address"),
                })?,
                owner,
                mac,
            });
        }
        Ok(out)
    }
}

/// The address for a new lease: a pool member next to its siblings (where its slot is
/// free), else the start of the lowest free run long enough for the whole pool, else the
/// lowest free address.
fn pick(
    cidr: Ipv4Net,
    held: &BTreeMap<u32, String>,
    pool: Option<PoolSlot<'_>>,
) -> Option<Ipv4Addr> {
    let (first, last) = hosts(cidr);
    if first > last {
        return None;
    }
    let free = |a: u32| a >= first && a <= last && !held.contains_key(&a);
    if let Some(p) = pool {
        let prefix = format!("vm.{}-", p.pool);
        let sibling = held.iter().find_map(|(ip, owner)| {
            let idx: u32 = owner.strip_prefix(&prefix)?.parse().ok()?;
            ip.checked_sub(idx)
        });
        if let Some(base) = sibling {
            let want = base + p.index;
            if free(want) {
                return Some(Ipv4Addr::from(want));
            }
        } else {
            let n = p.count.max(1);
            let mut base = first;
            while base + n - 1 <= last {
                if (base..base + n).all(free) {
                    return Some(Ipv4Addr::from(base + p.index));
                }
                base += 1;
            }
        }
    }
    (first..=last).find(|a| free(*a)).map(Ipv4Addr::from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(d.path()).unwrap();
        (d, s)
    }

    fn net() -> Ipv4Net {
        "10.77.0.0/29".parse().unwrap()
    }

    #[test]
    fn leases_are_stable_unique_and_released() {
        let (d, s) = store();
        let a = s.lease("lan", net(), "vm.a", None, None).unwrap();
        assert_eq!(
            (a.ip, a.mac.as_str()),
            ("10.77.0.2".parse().unwrap(), "02:fc:0a:4d:00:02")
        );
        let b = s.lease("lan", net(), "vm.b", None, None).unwrap();
        assert_eq!(b.ip, "10.77.0.3".parse::<Ipv4Addr>().unwrap());
        // Asking again (a re-apply, a restart, another process) gives the same lease.
        drop(s);
        let s = SqliteStore::open(d.path()).unwrap();
        assert_eq!(s.lease("lan", net(), "vm.a", None, None).unwrap(), a);
        s.release_lease("lan", "vm.a").unwrap();
        s.release_lease("lan", "vm.a").unwrap();
        let c = s.lease("lan", net(), "vm.c", None, None).unwrap();
        assert_eq!(c.ip, a.ip, "a released address is reused");
        assert_eq!(s.leases("lan").unwrap().len(), 2);
    }

    #[test]
    fn fixed_addresses_pools_and_exhaustion() {
        let (_d, s) = store();
        let fixed: Ipv4Addr = "10.77.0.4".parse().unwrap();
        assert_eq!(
            s.lease("lan", net(), "vm.f", Some(fixed), None).unwrap().ip,
            fixed
        );
        let err = s
            .lease("lan", net(), "vm.g", Some(fixed), None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "vm.g asks for 10.77.0.4, which network.lan already leased to vm.f"
        );
        // A pool of 2 needs a free run of 2: .2/.3 (before the fixed .4), in index order
        // whichever member comes first.
        let slot = |index| {
            Some(PoolSlot {
                pool: "w",
                index,
                count: 2,
            })
        };
        assert_eq!(
            s.lease("lan", net(), "vm.w-1", None, slot(1)).unwrap().ip,
            "10.77.0.3".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            s.lease("lan", net(), "vm.w-0", None, slot(0)).unwrap().ip,
            "10.77.0.2".parse::<Ipv4Addr>().unwrap()
        );
        // /29: .2–.6 usable; .5 and .6 are left.
        s.lease("lan", net(), "vm.x", None, None).unwrap();
        s.lease("lan", net(), "vm.y", None, None).unwrap();
        let err = s.lease("lan", net(), "vm.z", None, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "network.lan (10.77.0.0/29) has no free address left for vm.z"
        );
    }
}
