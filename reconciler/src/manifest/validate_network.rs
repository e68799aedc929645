//! Network validation: CIDRs, overlaps, bridge names and DNS.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;

use ipnet::Ipv4Net;

use super::model::*;
use super::policy::{self, Egress};
use super::raw::*;
use super::validate::{Entries, Entry, Resolver};
use crate::address::Kind;

pub(super) struct NetInfo {
    pub net: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub file: usize,
    pub cidr_span: Range<usize>,
}

/// A network's policy: egress, and allow/deny/host_ports in normal form.
type Policy = (Egress, Vec<String>, Vec<String>, Vec<String>);

impl Resolver<'_, '_, '_> {
    /// Check a network's egress policy; every malformed entry is reported.
    fn policy(&mut self, addr: &str, e: &Entry<'_, RawNetwork>, nat: bool) -> Option<Policy> {
        let mut ok = true;
        let egress = match &e.raw.egress {
            None if nat => Egress::Internet,
            None => Egress::None,
            Some(s) => match Egress::parse(s.get_ref()) {
                Ok(g) => g,
                Err(why) => {
                    self.cx.err(e.file, &s.span(), format!("{addr}: {why}"));
                    ok = false;
                    Egress::None
                }
            },
        };
        let mut list = |field: &str,
                        entries: &Option<Vec<toml::Spanned<String>>>,
                        parse: &dyn Fn(&str) -> Result<String, String>|
         -> Vec<String> {
            let mut out = Vec::new();
            for s in entries.iter().flatten() {
                match parse(s.get_ref()) {
                    Ok(n) if out.contains(&n) => {
                        self.cx.err(
                            e.file,
                            &s.span(),
                            format!("{addr}: {field} lists `{n}` twice"),
                        );
                        ok = false;
                    }
                    Ok(n) => out.push(n),
                    Err(why) => {
                        self.cx.err(
                            e.file,
                            &s.span(),
                            format!("{addr}: {field} entry `{}`: {why}", s.get_ref()),
                        );
                        ok = false;
                    }
                }
            }
            out
        };
        let rule = |s: &str| policy::parse_rule(s).map(|r| r.to_string());
        let ports = |s: &str| policy::parse_ports(s).map(|p| p.to_string());
        let allow = list("allow", &e.raw.allow, &rule);
        let deny = list("deny", &e.raw.deny, &rule);
        let host_ports = list("host_ports", &e.raw.host_ports, &ports);
        ok.then_some((egress, allow, deny, host_ports))
    }

    pub(super) fn networks(
        &mut self,
        networks: &Entries<'_, RawNetwork>,
    ) -> BTreeMap<String, NetInfo> {
        let mut out: BTreeMap<String, NetInfo> = BTreeMap::new();
        for (name, e) in networks {
            let addr = format!("network.{name}");
            let raw = e.raw.cidr.get_ref();
            let net: Ipv4Net = match raw.parse() {
                Ok(n) => n,
                Err(_) => {
                    self.cx.err(e.file, &e.raw.cidr.span(), format!("{addr}: invalid cidr `{raw}`: expected an IPv4 network such as \"10.77.0.0/24\""));
                    continue;
                }
            };
            if net.addr() != net.network() {
                self.cx.err(
                    e.file,
                    &e.raw.cidr.span(),
                    format!(
                        "{addr}: cidr `{raw}` has host bits set: did you mean \"{}\"?",
                        net.trunc()
                    ),
                );
                continue;
            }
            if net.prefix_len() > 30 {
                self.cx.err(e.file, &e.raw.cidr.span(), format!("{addr}: cidr `{raw}` leaves no room for a gateway and VMs: use a prefix of /30 or shorter"));
                continue;
            }
            if let Some((other, _)) = out
                .iter()
                .find(|(_, o)| o.net.contains(&net.network()) || net.contains(&o.net.network()))
            {
                let o = &out[other];
                self.cx.err(
                    e.file,
                    &e.raw.cidr.span(),
                    format!("{addr}: cidr {net} overlaps network.{other} ({})", o.net),
                );
                continue;
            }
            let bridge = format!("fort-{name}");
            if bridge.len() > 15 {
                self.cx.err(e.file, &e.name_span, format!("{addr}: its bridge would be named `{bridge}` ({} bytes) but Linux interface names have at most 15: use a network name of at most 10 characters", bridge.len()));
                continue;
            }
            let dns = match &e.raw.dns {
                None => Some(Dns::FromHost),
                Some(d) => match d.get_ref() {
                    RawDns::Text(t) if t == "from-host" => Some(Dns::FromHost),
                    RawDns::Text(t) => {
                        self.cx.err(e.file, &d.span(), format!("{addr}: dns must be \"from-host\" or a list of addresses, got \"{t}\""));
                        None
                    }
                    RawDns::List(l) if l.is_empty() => {
                        self.cx.err(e.file, &d.span(), format!("{addr}: dns list is empty: give at least one address, or \"from-host\""));
                        None
                    }
                    RawDns::List(l) => {
                        let parsed: Result<Vec<IpAddr>, String> =
                            l.iter().map(|s| s.parse().map_err(|_| s.clone())).collect();
                        match parsed {
                            Ok(v) => Some(Dns::Servers(v)),
                            Err(bad) => {
                                self.cx.err(
                                    e.file,
                                    &d.span(),
                                    format!("{addr}: invalid dns server address `{bad}`"),
                                );
                                None
                            }
                        }
                    }
                },
            };
            let Some(dns) = dns else { continue };
            let nat = e.raw.nat.unwrap_or(false);
            let Some((egress, allow, deny, host_ports)) = self.policy(&addr, e, nat) else {
                continue;
            };
            let gateway = Ipv4Addr::from(u32::from(net.network()) + 1);
            let spec = Spec::Network(NetworkSpec {
                cidr: net,
                gateway,
                nat,
                isolated: e.raw.isolated.unwrap_or(false),
                dns,
                bridge: bridge.clone(),
                egress,
                allow,
                deny,
                host_ports,
            });
            let o = self.cx.origin(e.file, &e.span);
            self.add(Kind::Network, name, o, spec, vec![]);
            out.insert(
                name.clone(),
                NetInfo {
                    net,
                    gateway,
                    bridge,
                    file: e.file,
                    cidr_span: e.raw.cidr.span(),
                },
            );
        }
        out
    }
}
