//! fort's nftables table for a network (nftnl over netlink): masquerade for traffic from the
//! network's CIDR leaving it, forward rules (established/related back in, bridge → out), the
//! host fence (input), and what published ports need of the bridge (loopback masqueraded,
//! guests' 127/8 dropped). Reading tables back is `nft_dump`.

use std::ffi::{CStr, CString};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nftnl::expr::InterfaceName;
use nftnl::{nft_expr, Batch, Chain, ChainType, Hook, MsgType, Policy, ProtoFamily, Rule, Table};

pub use super::nft_dump::{forward_chains, rule_comments, table_exists, ForwardChain};
use super::nl::NfSocket;
use super::NetError;
use crate::manifest::policy::{Egress, Ports, Proto, Rule as PolicyRule, NOT_INTERNET};

/// The comments fort puts on its rules; observing a table compares them.
pub const MASQUERADE: &str = "fort:masquerade";
pub const ESTABLISHED: &str = "fort:established";
pub const FROM_BRIDGE: &str = "fort:from-bridge";
pub const SAME_NETWORK: &str = "fort:same-network";
/// Connections the host opens from 127.0.0.0/8 to a published port leave through the bridge
/// (the bridge has `route_localnet = 1`): masqueraded to the gateway, so the guest can reply.
pub const LOOPBACK_MASQUERADE: &str = "fort:loopback-masquerade";
/// With `route_localnet` on, a guest's packet from or to 127.0.0.0/8 would no longer be a
/// martian: dropped before NAT, where no reply of a host connection carries such an address.
pub const GUEST_LOOPBACK_SOURCE: &str = "fort:guest-loopback-source";
pub const GUEST_LOOPBACK_DESTINATION: &str = "fort:guest-loopback-destination";

/// What a network's table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub name: String,
    pub cidr: Ipv4Net,
    pub bridge: String,
    pub nat: bool,
    /// The guests' fence; `None` for a table an older fort made (everything from the bridge
    /// is forwarded, the host is open), kept as it is until the network is applied again.
    pub policy: Option<Fence>,
}

/// A network's egress policy and host ports, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub egress: Egress,
    pub allow: Vec<PolicyRule>,
    pub deny: Vec<PolicyRule>,
    pub host_ports: Vec<Ports>,
    /// The guests' resolvers: reachable on port 53 under `egress = "internet"` even when
    /// they are private addresses (a home router, a corporate resolver).
    pub dns: Vec<Ipv4Addr>,
}

/// A chain's rules: each rule's comment and what it matches.
type ChainRules = Vec<(String, Match)>;

/// One rule to build: its comment, and what it matches and does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Match {
    Masquerade,
    LoopbackMasquerade,
    /// From the bridge with a source (`true`) or destination in 127.0.0.0/8: dropped.
    GuestLoopback(bool),
    Established,
    /// Traffic from the bridge to `net` (and ports), accepted or dropped.
    To {
        net: Option<Ipv4Net>,
        ports: Option<(Proto, u16, u16)>,
        accept: bool,
    },
    /// Traffic from the bridge out through another fort bridge.
    ToFortBridge,
    /// Bridged between two ports of the bridge (seen here only with br_netfilter).
    SameNetwork,
    /// Guests → host: established, ICMP, a port, or the rest.
    HostEstablished,
    HostIcmp,
    HostPort(Proto, u16, u16),
    HostDeny,
}

impl TableSpec {
    /// Every rule, in order, per chain: postrouting, forward, input, guard (prerouting).
    fn rules(&self) -> [ChainRules; 4] {
        let mut post = Vec::new();
        if self.nat {
            post.push((MASQUERADE.to_string(), Match::Masquerade));
        }
        let mut fwd = vec![(ESTABLISHED.to_string(), Match::Established)];
        let mut input = Vec::new();
        let Some(p) = &self.policy else {
            fwd.push((
                FROM_BRIDGE.to_string(),
                Match::To {
                    net: None,
                    ports: None,
                    accept: true,
                },
            ));
            return [post, fwd, input, Vec::new()];
        };
        post.push((LOOPBACK_MASQUERADE.to_string(), Match::LoopbackMasquerade));
        // With br_netfilter, frames bridged between two guests of the network pass this
        // hook too (in and out through the bridge): they are not egress, and without
        // br_netfilter they never get here. Port isolation (`isolated`) is the bridge's.
        fwd.push((SAME_NETWORK.to_string(), Match::SameNetwork));
        let guard = vec![
            (
                GUEST_LOOPBACK_SOURCE.to_string(),
                Match::GuestLoopback(true),
            ),
            (
                GUEST_LOOPBACK_DESTINATION.to_string(),
                Match::GuestLoopback(false),
            ),
        ];
        let to = |list: &[PolicyRule], accept: bool, verb: &str| -> Vec<(String, Match)> {
            let mut v = Vec::new();
            for r in list {
                let comment = format!("fort:{verb} {r}");
                match &r.ports {
                    None => v.push((
                        comment,
                        Match::To {
                            net: Some(r.cidr),
                            ports: None,
                            accept,
                        },
                    )),
                    Some(ports) => {
                        for proto in ports.protos() {
                            v.push((
                                comment.clone(),
                                Match::To {
                                    net: Some(r.cidr),
                                    ports: Some((proto, ports.first, ports.last)),
                                    accept,
                                },
                            ));
                        }
                    }
                }
            }
            v
        };
        // Deny wins: it comes first.
        fwd.extend(to(&p.deny, false, "deny"));
        fwd.extend(to(&p.allow, true, "allow"));
        match p.egress {
            Egress::All => fwd.push((
                FROM_BRIDGE.to_string(),
                Match::To {
                    net: None,
                    ports: None,
                    accept: true,
                },
            )),
            Egress::None => fwd.push((
                "fort:egress-none".to_string(),
                Match::To {
                    net: None,
                    ports: None,
                    accept: false,
                },
            )),
            Egress::Internet => {
                for d in &p.dns {
                    for proto in [Proto::Udp, Proto::Tcp] {
                        fwd.push((
                            format!("fort:dns {d}"),
                            Match::To {
                                net: Some(Ipv4Net::from(*d)),
                                ports: Some((proto, 53, 53)),
                                accept: true,
                            },
                        ));
                    }
                }
                fwd.push(("fort:no-fort-networks".to_string(), Match::ToFortBridge));
                for n in NOT_INTERNET {
                    if let Ok(net) = n.parse::<Ipv4Net>() {
                        fwd.push((
                            format!("fort:not-internet {net}"),
                            Match::To {
                                net: Some(net),
                                ports: None,
                                accept: false,
                            },
                        ));
                    }
                }
                fwd.push((
                    FROM_BRIDGE.to_string(),
                    Match::To {
                        net: None,
                        ports: None,
                        accept: true,
                    },
                ));
            }
        }
        input.push(("fort:host-established".to_string(), Match::HostEstablished));
        input.push(("fort:host-icmp".to_string(), Match::HostIcmp));
        for ports in &p.host_ports {
            for proto in ports.protos() {
                input.push((
                    format!("fort:host-port {ports}"),
                    Match::HostPort(proto, ports.first, ports.last),
                ));
            }
        }
        input.push(("fort:host-deny".to_string(), Match::HostDeny));
        [post, fwd, input, guard]
    }

    /// The rule comments the table should hold (observing compares them).
    pub fn expected_rules(&self) -> Vec<String> {
        self.rules().into_iter().flatten().map(|(c, _)| c).collect()
    }
}

pub(super) fn cstring(s: &str) -> Result<CString, NetError> {
    CString::new(s).map_err(|_| NetError::Name(s.to_string()))
}

/// Send a batch as one transaction; every message must be acknowledged and none refused.
pub(super) fn commit(batch: Batch, messages: usize) -> Result<(), NetError> {
    let batch = batch.finalize();
    let parts: Vec<&[u8]> = batch.iter().collect();
    let acks = NfSocket::open()?.transact(&parts)?;
    if acks < messages {
        return Err(NetError::Netfilter {
            what: format!("netfilter acknowledged {acks} of {messages} changes"),
            source: std::io::Error::other("missing acknowledgements"),
        });
    }
    Ok(())
}

/// Create (or re-create, atomically) the table with its chains and rules: one batch, so a
/// refused rule leaves the previous table as it was.
pub fn ensure(spec: &TableSpec) -> Result<(), NetError> {
    let name = cstring(&spec.name)?;
    let table = Table::new(&name, ProtoFamily::Ipv4);
    let mut batch = Batch::new();
    let mut n = 0;
    // add + delete + add in one transaction: whatever was there is replaced, atomically.
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);
    n += 3;

    let [post_rules, fwd_rules, input_rules, guard_rules] = spec.rules();
    let post_name = cstring("postrouting")?;
    let mut post = Chain::new(&post_name, &table);
    post.set_type(ChainType::Nat);
    post.set_hook(Hook::PostRouting, 100);
    post.set_policy(Policy::Accept);
    batch.add(&post, MsgType::Add);
    n += 1;

    let fwd_name = cstring("forward")?;
    let mut fwd = Chain::new(&fwd_name, &table);
    fwd.set_type(ChainType::Filter);
    fwd.set_hook(Hook::Forward, 0);
    fwd.set_policy(Policy::Accept);
    batch.add(&fwd, MsgType::Add);
    n += 1;

    let input_name = cstring("input")?;
    let mut input = Chain::new(&input_name, &table);
    if !input_rules.is_empty() {
        input.set_type(ChainType::Filter);
        input.set_hook(Hook::In, 0);
        input.set_policy(Policy::Accept);
        batch.add(&input, MsgType::Add);
        n += 1;
    }

    // Before conntrack's NAT (dstnat is -100): what a guest sends is seen as it sent it.
    let guard_name = cstring("guard")?;
    let mut guard = Chain::new(&guard_name, &table);
    if !guard_rules.is_empty() {
        guard.set_type(ChainType::Filter);
        guard.set_hook(Hook::PreRouting, -150);
        guard.set_policy(Policy::Accept);
        batch.add(&guard, MsgType::Add);
        n += 1;
    }

    let bridge = cstring(&spec.bridge)?;
    for (chain, rules) in [
        (&post, post_rules),
        (&fwd, fwd_rules),
        (&input, input_rules),
        (&guard, guard_rules),
    ] {
        for (comment, m) in rules {
            let mut r = Rule::new(chain);
            build(&mut r, &m, spec, &bridge)?;
            set_comment(&mut r, &comment)?;
            batch.add(&r, MsgType::Add);
            n += 1;
        }
    }
    if refuse_for_tests() {
        // The kernel refuses a rule for a chain that does not exist, after every other
        // message of the batch: the whole transaction must then be dropped.
        let missing = cstring("fort-no-such-chain")?;
        let chain = Chain::new(&missing, &table);
        batch.add(&Rule::new(&chain), MsgType::Add);
        n += 1;
    }
    commit(batch, n)
}

/// `FORT_NFT_REFUSE=1` (debug builds, i.e. tests): end every table batch with a message the
/// kernel refuses, to prove a refused batch leaves the previous rules in place.
fn refuse_for_tests() -> bool {
    cfg!(debug_assertions) && std::env::var_os("FORT_NFT_REFUSE").is_some_and(|v| v == "1")
}

const LOOPBACK: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(127, 0, 0, 0), Ipv4Addr::new(255, 0, 0, 0));

fn from_bridge(r: &mut Rule<'_>, bridge: &CStr) {
    r.add_expr(&nft_expr!(meta iifname));
    r.add_expr(&nft_expr!(cmp == InterfaceName::Exact(bridge.to_owned())));
}

fn daddr_in(r: &mut Rule<'_>, net: Ipv4Net) {
    r.add_expr(&nft_expr!(payload ipv4 daddr));
    r.add_expr(&nft_expr!(bitwise mask net.netmask(), xor Ipv4Addr::UNSPECIFIED));
    r.add_expr(&nft_expr!(cmp == net.network()));
}

/// Source address in 127.0.0.0/8 (`true`), or destination.
fn loopback(r: &mut Rule<'_>, source: bool) {
    if source {
        r.add_expr(&nft_expr!(payload ipv4 saddr));
    } else {
        r.add_expr(&nft_expr!(payload ipv4 daddr));
    }
    r.add_expr(&nft_expr!(bitwise mask LOOPBACK.1, xor Ipv4Addr::UNSPECIFIED));
    r.add_expr(&nft_expr!(cmp == LOOPBACK.0));
}

/// Protocol and destination port range (ports compared in network byte order).
pub(super) fn dport(r: &mut Rule<'_>, proto: Proto, first: u16, last: u16) {
    r.add_expr(&nft_expr!(meta l4proto));
    r.add_expr(&nft_expr!(cmp == proto.number()));
    match proto {
        Proto::Tcp => r.add_expr(&nft_expr!(payload tcp dport)),
        Proto::Udp => r.add_expr(&nft_expr!(payload udp dport)),
    }
    if first == last {
        r.add_expr(&nft_expr!(cmp == first.to_be()));
    } else {
        r.add_expr(&nft_expr!(cmp >= first.to_be()));
        r.add_expr(&nft_expr!(cmp <= last.to_be()));
    }
}

fn established(r: &mut Rule<'_>) {
    r.add_expr(&nft_expr!(ct state));
    let states =
        nftnl::expr::ct::States::ESTABLISHED.bits() | nftnl::expr::ct::States::RELATED.bits();
    r.add_expr(&nft_expr!(bitwise mask states, xor 0u32));
    r.add_expr(&nft_expr!(cmp != 0u32));
}

fn build(r: &mut Rule<'_>, m: &Match, spec: &TableSpec, bridge: &CStr) -> Result<(), NetError> {
    match m {
        Match::Masquerade => {
            let net = spec.cidr.network();
            let mask = spec.cidr.netmask();
            r.add_expr(&nft_expr!(payload ipv4 saddr));
            r.add_expr(&nft_expr!(bitwise mask mask, xor Ipv4Addr::UNSPECIFIED));
            r.add_expr(&nft_expr!(cmp == net));
            r.add_expr(&nft_expr!(payload ipv4 daddr));
            r.add_expr(&nft_expr!(bitwise mask mask, xor Ipv4Addr::UNSPECIFIED));
            r.add_expr(&nft_expr!(cmp != net));
            r.add_expr(&nft_expr!(masquerade));
        }
        Match::LoopbackMasquerade => {
            r.add_expr(&nft_expr!(meta oifname));
            r.add_expr(&nft_expr!(cmp == InterfaceName::Exact(bridge.to_owned())));
            loopback(r, true);
            r.add_expr(&nft_expr!(masquerade));
        }
        Match::GuestLoopback(source) => {
            from_bridge(r, bridge);
            loopback(r, *source);
            r.add_expr(&nft_expr!(verdict drop));
        }
        Match::Established => {
            established(r);
            r.add_expr(&nft_expr!(verdict accept));
        }
        Match::To { net, ports, accept } => {
            from_bridge(r, bridge);
            if let Some(net) = net {
                daddr_in(r, *net);
            }
            if let Some((proto, first, last)) = ports {
                dport(r, *proto, *first, *last);
            }
            if *accept {
                r.add_expr(&nft_expr!(verdict accept));
            } else {
                r.add_expr(&nft_expr!(verdict drop));
            }
        }
        Match::ToFortBridge => {
            from_bridge(r, bridge);
            r.add_expr(&nft_expr!(meta oifname));
            r.add_expr(&nft_expr!(
                cmp == InterfaceName::StartingWith(cstring("fort-")?)
            ));
            r.add_expr(&nft_expr!(verdict drop));
        }
        Match::SameNetwork => {
            from_bridge(r, bridge);
            r.add_expr(&nft_expr!(meta oifname));
            r.add_expr(&nft_expr!(cmp == InterfaceName::Exact(bridge.to_owned())));
            r.add_expr(&nft_expr!(verdict accept));
        }
        Match::HostEstablished => {
            from_bridge(r, bridge);
            established(r);
            r.add_expr(&nft_expr!(verdict accept));
        }
        Match::HostIcmp => {
            from_bridge(r, bridge);
            r.add_expr(&nft_expr!(meta l4proto));
            r.add_expr(&nft_expr!(cmp == 1u8));
            r.add_expr(&nft_expr!(verdict accept));
        }
        Match::HostPort(proto, first, last) => {
            from_bridge(r, bridge);
            dport(r, *proto, *first, *last);
            r.add_expr(&nft_expr!(verdict accept));
        }
        Match::HostDeny => {
            from_bridge(r, bridge);
            r.add_expr(&nft_expr!(verdict drop));
        }
    }
    Ok(())
}

pub(super) fn set_comment(r: &mut Rule<'_>, c: &str) -> Result<(), NetError> {
    let c = cstring(c)?;
    r.set_comment(&c)
        .map_err(|e| NetError::Name(format!("{}: {e}", c.to_string_lossy())))
}

/// Delete the table; gone already is fine.
pub fn delete(name: &str) -> Result<(), NetError> {
    let name = cstring(name)?;
    let table = Table::new(&name, ProtoFamily::Ipv4);
    let mut batch = Batch::new();
    // add + delete: succeeds whether or not the table existed.
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    commit(batch, 2)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::manifest::policy::{parse_ports, parse_rule};

    fn spec(egress: Egress, allow: &[&str], deny: &[&str], host: &[&str]) -> TableSpec {
        TableSpec {
            name: "fort-lan".into(),
            cidr: "10.77.0.0/24".parse().unwrap(),
            bridge: "fort-lan".into(),
            nat: true,
            policy: Some(Fence {
                egress,
                allow: allow.iter().map(|r| parse_rule(r).unwrap()).collect(),
                deny: deny.iter().map(|r| parse_rule(r).unwrap()).collect(),
                host_ports: host.iter().map(|p| parse_ports(p).unwrap()).collect(),
                dns: vec!["192.0.2.53".parse().unwrap()],
            }),
        }
    }

    #[test]
    fn rules_come_in_the_order_that_makes_deny_win_and_the_host_closed() {
        assert_eq!(
            spec(
                Egress::None,
                &["10.0.5.0/24:5432/tcp"],
                &["10.0.5.7/32"],
                &["53"]
            )
            .expected_rules(),
            [
                "fort:masquerade",
                "fort:loopback-masquerade",
                "fort:established",
                "fort:same-network",
                "fort:deny 10.0.5.7/32",
                "fort:allow 10.0.5.0/24:5432/tcp",
                "fort:egress-none",
                "fort:host-established",
                "fort:host-icmp",
                "fort:host-port 53",
                "fort:host-port 53",
                "fort:host-deny",
                "fort:guest-loopback-source",
                "fort:guest-loopback-destination",
            ]
        );
        let internet = spec(Egress::Internet, &[], &[], &[]).expected_rules();
        assert_eq!(
            internet[..7],
            [
                "fort:masquerade",
                "fort:loopback-masquerade",
                "fort:established",
                "fort:same-network",
                "fort:dns 192.0.2.53",
                "fort:dns 192.0.2.53",
                "fort:no-fort-networks",
            ]
        );
        assert_eq!(internet.len(), 7 + NOT_INTERNET.len() + 1 + 3 + 2);
        assert_eq!(internet[7 + NOT_INTERNET.len()], FROM_BRIDGE);
        // A table an older fort made: forwarded from the bridge, no input chain.
        let legacy = TableSpec {
            policy: None,
            ..spec(Egress::All, &[], &[], &[])
        };
        assert_eq!(
            legacy.expected_rules(),
            [MASQUERADE, ESTABLISHED, FROM_BRIDGE]
        );
    }
}
