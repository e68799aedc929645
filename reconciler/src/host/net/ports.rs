//! A VM's published ports: its own nftables table `fort-ports-VM-STATEID` (nftnl over
//! netlink) with DNAT rules from the host's addresses to the guest's leased address, on the
//! prerouting hook (other hosts) and the output hook (the host itself).
//!
//! Why a table per VM and not rules in the network's table: the ports belong to the VM (its
//! spec, its lease), change with it and go with it; the VM's apply replaces its table in one
//! batch without touching the network's rules (which the network observes rule by rule), and
//! the state id in the name lets the orphan scan tell this state dir's leftovers apart.

use std::net::Ipv4Addr;
use std::ptr::NonNull;

use nftnl::expr::{Expression, Immediate, InterfaceName, Nat, NatType, Register};
use nftnl::nftnl_sys as sys;
use nftnl::{nft_expr, Batch, Chain, ChainType, Hook, MsgType, Policy, ProtoFamily, Rule, Table};

use super::nft::{commit, cstring, dport, set_comment};
use super::nl::{is_ack, is_done, NfSocket};
use super::NetError;
use crate::manifest::ports::PortMap;

/// Every port table's name starts with this (longer than any bridge name can be, so a
/// network's table `fort-NAME` never looks like one).
pub const TABLE_PREFIX: &str = "fort-ports-";

/// The table of `vm` under the state dir `state_id`.
pub fn table_name(vm: &str, state_id: &str) -> String {
    format!("{TABLE_PREFIX}{vm}-{state_id}")
}

/// The VM a port table of `state_id` belongs to (`None`: not one of this state dir's).
pub fn table_owner<'a>(table: &'a str, state_id: &str) -> Option<&'a str> {
    table
        .strip_prefix(TABLE_PREFIX)?
        .strip_suffix(state_id)?
        .strip_suffix('-')
        .filter(|vm| !vm.is_empty())
}

/// What a VM's port table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortsSpec {
    pub name: String,
    /// The guest's leased address.
    pub guest: Ipv4Addr,
    pub maps: Vec<PortMap>,
}

/// One DNAT rule: host ports (on an address, or any local one) → the guest, at `to_port` or
/// at the same port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dnat {
    comment: String,
    map: PortMap,
    host: (u16, u16),
    to_port: Option<u16>,
}

impl PortsSpec {
    /// The DNAT rules, each chain gets all of them. A range mapped to the same ports is one
    /// rule keeping the port; a shifted range is one rule per port (nftables' port ranges in
    /// `dnat` pick a port, they do not shift).
    fn rules(&self) -> Vec<Dnat> {
        let mut v = Vec::new();
        for m in &self.maps {
            let comment = format!("fort:port {m}");
            if m.host == m.guest {
                v.push(Dnat {
                    comment,
                    map: *m,
                    host: m.host,
                    to_port: (m.host.0 == m.host.1).then_some(m.guest.0),
                });
                continue;
            }
            for off in 0..m.host_len().min(m.guest_len()) {
                let h = m.host.0 + off as u16;
                v.push(Dnat {
                    comment: comment.clone(),
                    map: *m,
                    host: (h, h),
                    to_port: Some(m.guest.0 + off as u16),
                });
            }
        }
        v
    }

    /// The rule comments the table should hold: prerouting's, then output's.
    pub fn expected_rules(&self) -> Vec<String> {
        let r: Vec<String> = self.rules().into_iter().map(|d| d.comment).collect();
        r.iter().chain(r.iter()).cloned().collect()
    }
}

/// `fib daddr type`: the route type of the destination address (nftnl has no wrapper).
struct FibDaddrType;

impl Expression for FibDaddrType {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        const NFTA_FIB_F_DADDR: u32 = 1 << 1;
        const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
        // SAFETY: a fresh "fib" expression, set with u32 attributes libnftnl copies; the
        // caller (Rule::add_expr) takes ownership of it.
        unsafe {
            let e = sys::nftnl_expr_alloc(c"fib".as_ptr());
            let Some(e) = NonNull::new(e) else {
                // As nftnl itself does when such a small allocation fails.
                std::process::abort();
            };
            sys::nftnl_expr_set_u32(
                e.as_ptr(),
                sys::NFTNL_EXPR_FIB_DREG as u16,
                Register::Reg1.to_raw(),
            );
            sys::nftnl_expr_set_u32(
                e.as_ptr(),
                sys::NFTNL_EXPR_FIB_RESULT as u16,
                NFT_FIB_RESULT_ADDRTYPE,
            );
            sys::nftnl_expr_set_u32(
                e.as_ptr(),
                sys::NFTNL_EXPR_FIB_FLAGS as u16,
                NFTA_FIB_F_DADDR,
            );
            e
        }
    }
}

/// `RTN_LOCAL`: an address of this host (127.0.0.0/8 included).
const RTN_LOCAL: u32 = 2;

fn build(r: &mut Rule<'_>, d: &Dnat, guest: Ipv4Addr, prerouting: bool) -> Result<(), NetError> {
    if prerouting {
        // Guests do not reach published ports through the host's addresses: their packets
        // would be forwarded back into a fort network, which the egress policy judges.
        r.add_expr(&nft_expr!(meta iifname));
        r.add_expr(&nft_expr!(
            cmp != InterfaceName::StartingWith(cstring("fort-")?)
        ));
    }
    match d.map.addr {
        Some(a) => {
            r.add_expr(&nft_expr!(payload ipv4 daddr));
            r.add_expr(&nft_expr!(cmp == a));
        }
        None => {
            r.add_expr(&FibDaddrType);
            r.add_expr(&nft_expr!(cmp == RTN_LOCAL));
        }
    }
    dport(r, d.map.proto, d.host.0, d.host.1);
    r.add_expr(&Immediate::new(guest.octets(), Register::Reg1));
    if let Some(p) = d.to_port {
        r.add_expr(&Immediate::new(p.to_be(), Register::Reg2));
    }
    r.add_expr(&Nat {
        nat_type: NatType::DNat,
        family: ProtoFamily::Ipv4,
        ip_register: Register::Reg1,
        port_register: d.to_port.map(|_| Register::Reg2),
    });
    Ok(())
}

/// Create (or replace, atomically) the VM's table: one batch, so a refused rule leaves the
/// previous table as it was.
pub fn ensure(spec: &PortsSpec) -> Result<(), NetError> {
    let name = cstring(&spec.name)?;
    let table = Table::new(&name, ProtoFamily::Ipv4);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);
    let mut n = 3;
    let pre_name = cstring("prerouting")?;
    let out_name = cstring("output")?;
    let mut pre = Chain::new(&pre_name, &table);
    let mut out = Chain::new(&out_name, &table);
    // dstnat priority, as `nft add chain … { type nat hook prerouting priority dstnat; }`.
    for (c, hook) in [(&mut pre, Hook::PreRouting), (&mut out, Hook::Out)] {
        c.set_type(ChainType::Nat);
        c.set_hook(hook, -100);
        c.set_policy(Policy::Accept);
    }
    batch.add(&pre, MsgType::Add);
    batch.add(&out, MsgType::Add);
    n += 2;
    let rules = spec.rules();
    for (chain, prerouting) in [(&pre, true), (&out, false)] {
        for d in &rules {
            let mut r = Rule::new(chain);
            build(&mut r, d, spec.guest, prerouting)?;
            set_comment(&mut r, &d.comment)?;
            batch.add(&r, MsgType::Add);
            n += 1;
        }
    }
    commit(batch, n)
}

/// The names of every IPv4 nftables table.
pub fn ipv4_tables() -> Result<Vec<String>, NetError> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: a header-only GETTABLE dump request built into `buf`.
    let len = unsafe {
        let nlh = sys::nftnl_nlmsg_build_hdr(
            buf.as_mut_ptr().cast(),
            libc::NFT_MSG_GETTABLE as u16,
            libc::NFPROTO_IPV4 as u16,
            (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16,
            1,
        );
        (*nlh).nlmsg_len as usize
    };
    let sock = NfSocket::open()?;
    sock.send(&buf[..len])?;
    let mut names = Vec::new();
    sock.recv_until(|r| {
        if is_done(r) || is_ack(r) {
            return true;
        }
        names.extend(parse_table_name(&r.bytes));
        false
    })?;
    Ok(names)
}

fn parse_table_name(msg: &[u8]) -> Option<String> {
    // SAFETY: one complete netlink message, copied to an aligned buffer; libnftnl reads
    // within nlmsg_len; the name is copied out before the table object is freed.
    unsafe {
        let mut aligned = vec![0u32; msg.len().div_ceil(4)];
        std::ptr::copy_nonoverlapping(msg.as_ptr(), aligned.as_mut_ptr().cast::<u8>(), msg.len());
        let t = sys::nftnl_table_alloc();
        if t.is_null() {
            return None;
        }
        let nlh = aligned.as_ptr().cast::<libc::nlmsghdr>();
        let mut out = None;
        if sys::nftnl_table_nlmsg_parse(nlh, t) >= 0 {
            let p = sys::nftnl_table_get_str(t, sys::NFTNL_TABLE_NAME as u16);
            if !p.is_null() {
                out = Some(std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned());
            }
        }
        sys::nftnl_table_free(t);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::manifest::ports::parse_port_map;

    #[test]
    fn one_rule_per_entry_or_per_shifted_port_in_both_chains() {
        let spec = PortsSpec {
            name: table_name("web", "1a2b3c4d"),
            guest: "10.77.0.5".parse().unwrap(),
            maps: [
                "8080:80",
                "127.0.0.1:2222:22/tcp",
                "9000-9002:9000-9002/udp",
                "7000-7001:70-71",
            ]
            .iter()
            .map(|s| parse_port_map(s).unwrap())
            .collect(),
        };
        let r = spec.rules();
        let summary: Vec<(String, (u16, u16), Option<u16>)> = r
            .iter()
            .map(|d| (d.comment.clone(), d.host, d.to_port))
            .collect();
        assert_eq!(
            summary,
            [
                ("fort:port 8080:80/tcp".to_string(), (8080, 8080), Some(80)),
                (
                    "fort:port 127.0.0.1:2222:22/tcp".to_string(),
                    (2222, 2222),
                    Some(22)
                ),
                // The same ports: one rule, the port kept.
                (
                    "fort:port 9000-9002:9000-9002/udp".to_string(),
                    (9000, 9002),
                    None
                ),
                (
                    "fort:port 7000-7001:70-71/tcp".to_string(),
                    (7000, 7000),
                    Some(70)
                ),
                (
                    "fort:port 7000-7001:70-71/tcp".to_string(),
                    (7001, 7001),
                    Some(71)
                ),
            ]
        );
        let want = spec.expected_rules();
        assert_eq!(want.len(), 10, "prerouting and output: {want:?}");
        assert_eq!(want[0], want[5]);
        assert_eq!(spec.name, "fort-ports-web-1a2b3c4d");
    }

    #[test]
    fn table_names_say_whose_they_are() {
        assert_eq!(
            table_owner("fort-ports-web-1-1a2b3c4d", "1a2b3c4d"),
            Some("web-1")
        );
        assert_eq!(table_owner("fort-ports-web-1-ffffffff", "1a2b3c4d"), None);
        assert_eq!(table_owner("fort-ports-1a2b3c4d", "1a2b3c4d"), None);
        assert_eq!(table_owner("fort-lan", "1a2b3c4d"), None);
        // A network's table is at most 15 bytes: never a port table.
        assert!(TABLE_PREFIX.len() + 1 + 1 + 8 > 15);
    }
}
