//! `network.*`: a Linux bridge holding the gateway address, fort's nftables table (NAT and
//! forward rules) and IP forwarding — all over netlink — plus the per-VM attachment (a
//! leased address and MAC, a persistent TAP on the bridge) that VMs use.

use std::net::{IpAddr, Ipv4Addr};

use async_trait::async_trait;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{Ctx, ResourceError, ResourceKind};
use crate::address::{Address, Kind};
use crate::crash::Point;
use crate::host::net::link::Netlink;
use crate::host::net::nft::{self, Fence, TableSpec};
use crate::host::net::{self, dns, tap, NetError};
use crate::manifest::policy::{self, Egress};
use crate::manifest::{Dns, NetworkSpec, Resource, Spec};
use crate::plan::{self, Change, Effect, Observation, PlanError, PlanOptions};
use crate::state::leases::PoolSlot;
use crate::state::{Record, StateStore};

pub struct Network;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkOutputs {
    pub bridge: String,
    pub table: String,
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub nat: bool,
    pub isolated: bool,
    /// What guests get as resolvers (`from-host` resolved at apply time).
    pub dns: Vec<IpAddr>,
    /// fort switched `net.ipv4.ip_forward` on (it was off): the last network destroyed
    /// switches it back off.
    pub enabled_ip_forward: bool,
    /// The fence applied (`None`: a table made by a fort without egress policies).
    #[serde(default)]
    pub egress: Option<Egress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<String>,
}

impl From<NetError> for ResourceError {
    fn from(e: NetError) -> Self {
        ResourceError::Check(super::error_chain(&e))
    }
}

fn spec_of(r: &Resource) -> Result<&NetworkSpec, ResourceError> {
    match &r.spec {
        Spec::Network(n) => Ok(n),
        _ => Err(ResourceError::Check(format!(
            "{} has no network spec",
            r.address
        ))),
    }
}

/// The `meta` flag saying fort switched `net.ipv4.ip_forward` on in this state dir.
const IP_FORWARD_FLAG: &str = "enabled_ip_forward";

/// The alias fort marks its interfaces with: `fort:<address>@<state id>`, so the orphan scan
/// can tell this state dir's leftovers from another fort's (and from anyone else's).
pub fn alias(ctx: &Ctx, addr: &Address) -> String {
    format!("fort:{addr}@{}", ctx.state_id())
}

fn table_spec(o: &NetworkOutputs) -> TableSpec {
    // Entries were validated when the manifest was read; one that no longer parses (a
    // record from another fort) is left out rather than failing the whole table.
    let rules = |v: &[String]| {
        v.iter()
            .filter_map(|r| policy::parse_rule(r).ok())
            .collect()
    };
    TableSpec {
        name: o.table.clone(),
        cidr: o.cidr,
        bridge: o.bridge.clone(),
        nat: o.nat,
        policy: o.egress.map(|egress| Fence {
            egress,
            allow: rules(&o.allow),
            deny: rules(&o.deny),
            host_ports: o
                .host_ports
                .iter()
                .filter_map(|p| policy::parse_ports(p).ok())
                .collect(),
            dns: o
                .dns
                .iter()
                .filter_map(|d| match d {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
                .collect(),
        }),
    }
}

/// The error for an interface with fort's name that fort did not make.
fn foreign(name: &str, kind: Option<&str>, owner: &Address) -> String {
    format!(
        "an interface named {name} ({}) already exists and was not created by fort; fort never adopts interfaces: remove or rename it, or rename {owner}",
        kind.unwrap_or("device")
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, ResourceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ResourceError::Check(format!("netfilter task failed: {e}")))?
        .map_err(ResourceError::from)
}

#[async_trait]
impl ResourceKind for Network {
    fn kind(&self) -> Kind {
        Kind::Network
    }

    fn field_effect(&self, field: &str) -> Effect {
        match field {
            "nat" | "isolated" | "dns" | "egress" | "allow" | "deny" | "host_ports" => {
                Effect::Update
            }
            _ => Effect::Replace,
        }
    }

    fn plan(
        &self,
        desired: Option<&Resource>,
        recorded: Option<&Record>,
        observed: Option<&Observation>,
        opts: &PlanOptions,
        _notes: &mut Vec<String>,
    ) -> Result<Option<Change>, PlanError> {
        let mut change = plan::standard(self, desired, recorded, observed, opts)?;
        if let (Some(c), Some(d)) = (change.as_mut(), desired) {
            if c.op != plan::Op::Destroy {
                c.details = fence_details(spec_of(d).map_err(|e| PlanError::Refused {
                    address: d.address.clone(),
                    why: e.to_string(),
                })?);
            }
        }
        Ok(change)
    }

    async fn preflight(
        &self,
        _ctx: &Ctx,
        desired: &Resource,
    ) -> Result<Option<String>, ResourceError> {
        let spec = spec_of(desired)?;
        let nl = Netlink::connect()?;
        let links = nl.links().await?;
        if let Some(l) = links.iter().find(|l| l.name == spec.bridge) {
            if !l.made_by_fort() {
                return Ok(Some(foreign(&l.name, l.kind.as_deref(), &desired.address)));
            }
        }
        for (route, oif) in nl.ipv4_routes().await? {
            let on_own_bridge = oif
                .and_then(|i| links.iter().find(|l| l.index == i))
                .is_some_and(|l| l.name == spec.bridge);
            if route.prefix_len() == 0 || on_own_bridge {
                continue;
            }
            if route.contains(&spec.cidr.network()) || spec.cidr.contains(&route.network()) {
                let dev = oif
                    .and_then(|i| links.iter().find(|l| l.index == i))
                    .map_or_else(|| "no device".to_string(), |l| l.name.clone());
                return Ok(Some(format!(
                    "cidr {} overlaps the host route {route} (dev {dev}): choose a range the host does not use",
                    spec.cidr
                )));
            }
        }
        Ok(None)
    }

    async fn observe(&self, _ctx: &Ctx, record: &Record) -> Result<Observation, ResourceError> {
        let out: NetworkOutputs = super::asset::outputs(&record.address, &record.outputs)?;
        let nl = Netlink::connect()?;
        let Some(br) = nl.link(&out.bridge).await? else {
            return Ok(Observation::Missing {
                what: format!("bridge {} is missing", out.bridge),
            });
        };
        if !br.made_by_fort() {
            return Ok(Observation::Drifted {
                what: format!(
                    "{} was replaced by an interface fort did not create",
                    out.bridge
                ),
            });
        }
        if !br.up {
            return Ok(Observation::Drifted {
                what: format!("bridge {} is down", out.bridge),
            });
        }
        let gw = Ipv4Net::new(out.gateway, out.cidr.prefix_len())
            .map_err(|e| ResourceError::Check(e.to_string()))?;
        if !nl.ipv4_addresses(br.index).await?.contains(&gw) {
            return Ok(Observation::Drifted {
                what: format!("bridge {} lost its address {gw}", out.bridge),
            });
        }
        let table = out.table.clone();
        let rules = blocking(move || nft::rule_comments(&table)).await?;
        let want: Vec<String> = table_spec(&out).expected_rules();
        match rules {
            None => {
                return Ok(Observation::Drifted {
                    what: format!("nftables table {} is missing", out.table),
                })
            }
            Some(mut got) => {
                got.sort();
                let mut want = want;
                want.sort();
                if got != want {
                    return Ok(Observation::Drifted {
                        what: format!(
                            "nftables table {} was changed (rules: {}; expected {})",
                            out.table,
                            if got.is_empty() {
                                "none".to_string()
                            } else {
                                got.join(", ")
                            },
                            want.join(", ")
                        ),
                    });
                }
            }
        }
        if out.egress.is_some() && net::ipv6_disabled(&out.bridge) == Some(false) {
            return Ok(Observation::Drifted {
                what: format!(
                    "IPv6 is on on {} (guests could reach the host over it)",
                    out.bridge
                ),
            });
        }
        if out.egress.is_some() && net::route_localnet(&out.bridge) == Some(false) {
            return Ok(Observation::Drifted {
                what: format!(
                    "route_localnet is off on {} (published ports are not reachable on 127.0.0.1)",
                    out.bridge
                ),
            });
        }
        if !net::ip_forward()? {
            return Ok(Observation::Drifted {
                what: "net.ipv4.ip_forward is 0 (NAT and forwarding need it)".into(),
            });
        }
        Ok(Observation::Ok)
    }

    async fn apply(
        &self,
        ctx: &Ctx,
        desired: &Resource,
        recorded: Option<&Record>,
    ) -> Result<serde_json::Value, ResourceError> {
        let spec = spec_of(desired)?;
        let addr = &desired.address;
        let previous: Option<NetworkOutputs> =
            recorded.and_then(|r| super::asset::outputs(&r.address, &r.outputs).ok());
        let out = NetworkOutputs {
            bridge: spec.bridge.clone(),
            table: spec.bridge.clone(),
            cidr: spec.cidr,
            gateway: spec.gateway,
            nat: spec.nat,
            isolated: spec.isolated,
            dns: match &spec.dns {
                Dns::FromHost => dns::from_host(),
                Dns::Servers(v) => v.clone(),
            },
            enabled_ip_forward: previous.as_ref().is_some_and(|p| p.enabled_ip_forward),
            egress: Some(spec.egress),
            allow: spec.allow.clone(),
            deny: spec.deny.clone(),
            host_ports: spec.host_ports.clone(),
        };
        if previous.is_none() {
            // The names go in the row before the bridge or table exist.
            ctx.step(addr, Point::NetworkIntent, &out)?;
        }
        let nl = Netlink::connect()?;
        let mut created = false;
        let br = match nl.link(&spec.bridge).await? {
            Some(l) if l.made_by_fort() && l.kind.as_deref() == Some("bridge") => l,
            Some(l) => {
                return Err(ResourceError::Check(foreign(
                    &l.name,
                    l.kind.as_deref(),
                    &desired.address,
                )))
            }
            None => {
                created = true;
                let l = nl
                    .create_bridge(&spec.bridge, &alias(ctx, &desired.address))
                    .await?;
                ctx.step(addr, Point::NetworkBridge, &out)?;
                l
            }
        };
        let result = finish(ctx, addr, &nl, &br, out).await;
        if result.is_err() && created {
            // Leave nothing half-made: what this apply created goes again.
            let _ = nl.delete(br.index).await;
            let table = spec.bridge.clone();
            let _ = blocking(move || nft::delete(&table)).await;
        }
        let out = result?;
        serde_json::to_value(out).map_err(|e| ResourceError::Check(e.to_string()))
    }

    async fn destroy(&self, ctx: &Ctx, recorded: &Record) -> Result<(), ResourceError> {
        let out: NetworkOutputs = super::asset::outputs(&recorded.address, &recorded.outputs)?;
        let table = out.table.clone();
        blocking(move || nft::delete(&table)).await?;
        crate::crash::hit(Point::NetworkUnfiltered);
        let nl = Netlink::connect()?;
        if let Some(br) = nl.link(&out.bridge).await? {
            // Only what fort made: a foreign interface that took the name stays.
            if br.made_by_fort() {
                nl.delete(br.index).await?;
            }
        }
        let others = ctx.with_store(|s| s.resources())?;
        let last = !others
            .values()
            .any(|r| r.kind == Kind::Network && r.address != recorded.address);
        // Rows of older forts carry the flag themselves.
        let enabled = out.enabled_ip_forward || ctx.with_store(|s| s.flag(IP_FORWARD_FLAG))?;
        if last && enabled {
            net::set_ip_forward(false)?;
            ctx.with_store(|s| s.set_flag(IP_FORWARD_FLAG, false))?;
        }
        Ok(())
    }
}

/// What a network's guests may reach, for the plan.
fn fence_details(n: &NetworkSpec) -> Vec<String> {
    let mut v = vec![match n.egress {
        Egress::Internet => "egress: internet (public addresses only; private ranges, 100.64.0.0/10, 169.254.0.0/16 (cloud metadata), loopback, multicast and other fort networks are denied)".to_string(),
        Egress::None => "egress: none (nothing leaves the network)".to_string(),
        Egress::All => "egress: all (everything the host can route to)".to_string(),
    }];
    if n.egress == Egress::Internet {
        v.push(match &n.dns {
            Dns::Servers(s) => {
                let s: Vec<String> = s.iter().map(ToString::to_string).collect();
                format!("resolvers reachable on port 53: {}", s.join(", "))
            }
            Dns::FromHost => {
                "resolvers reachable on port 53: the host's (from its resolv.conf)".to_string()
            }
        });
    }
    if !n.allow.is_empty() {
        v.push(format!("allow: {}", n.allow.join(", ")));
    }
    if !n.deny.is_empty() {
        v.push(format!("deny: {} (wins over allow)", n.deny.join(", ")));
    }
    v.push(if n.host_ports.is_empty() {
        "host: closed to guests (ICMP and replies pass)".to_string()
    } else {
        format!(
            "host: closed to guests except {} (ICMP and replies pass)",
            n.host_ports.join(", ")
        )
    });
    v
}

/// Bridge up with its gateway address, the nft table, forwarding on, port isolation as
/// declared on the TAPs already attached.
async fn finish(
    ctx: &Ctx,
    addr: &Address,
    nl: &Netlink,
    br: &net::link::Link,
    mut out: NetworkOutputs,
) -> Result<NetworkOutputs, ResourceError> {
    if out.egress.is_some() {
        // Guests must not reach the host over IPv6 link-local: fort's rules are IPv4.
        net::disable_ipv6(&out.bridge)?;
    }
    if !br.up {
        nl.set_up(br.index).await?;
    }
    let gw = Ipv4Net::new(out.gateway, out.cidr.prefix_len())
        .map_err(|e| ResourceError::Check(e.to_string()))?;
    if !nl.ipv4_addresses(br.index).await?.contains(&gw) {
        nl.add_ipv4_address(br.index, out.gateway, out.cidr.prefix_len())
            .await?;
    }
    let t = table_spec(&out);
    blocking(move || nft::ensure(&t)).await?;
    if out.egress.is_some() {
        // Published ports reached on 127.0.0.1 leave through the bridge with a loopback
        // source (masqueraded there). Only once the table's guard is in place: it drops the
        // guests' own 127/8 packets, which this makes routable.
        net::set_route_localnet(&out.bridge)?;
    }
    if net::ip_forward()? {
        ctx.step(addr, Point::NetworkNft, &out)?;
    } else {
        // Recorded before it is done — for the state dir, not this network: whichever
        // network is destroyed last switches it back.
        out.enabled_ip_forward = true;
        ctx.with_store(|s| s.set_flag(IP_FORWARD_FLAG, true))?;
        ctx.step(addr, Point::NetworkNft, &out)?;
        net::set_ip_forward(true)?;
        crate::crash::hit(Point::NetworkForward);
    }
    for port in nl
        .links()
        .await?
        .into_iter()
        .filter(|l| l.controller == Some(br.index))
    {
        if port.made_by_fort() && port.isolated != Some(out.isolated) {
            nl.set_bridge_port(port.index, br.index, out.isolated)
                .await?;
        }
    }
    Ok(out)
}

/// A VM's place on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub tap: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    pub dns: Vec<IpAddr>,
}

/// What a VM asks of its network.
#[derive(Debug, Clone)]
pub struct AttachRequest<'a> {
    pub network: &'a str,
    /// `vm.NAME`: the lease owner and the TAP's alias.
    pub owner: &'a Address,
    pub tap: &'a str,
    pub fixed_ip: Option<Ipv4Addr>,
    pub pool: Option<PoolSlot<'a>>,
}

/// Lease an address, create the persistent TAP (or find fort's), make it a port of the
/// network's bridge with the network's isolation, and bring it up. Idempotent.
pub async fn attach(
    ctx: &Ctx,
    nl: &Netlink,
    req: &AttachRequest<'_>,
) -> Result<Attachment, ResourceError> {
    let net_addr = Address::new(Kind::Network, req.network);
    let rec = ctx.applied(&net_addr)?;
    let net: NetworkOutputs = super::asset::outputs(&net_addr, &rec.outputs)?;
    let lease = ctx.with_store(|s| {
        s.lease(
            req.network,
            net.cidr,
            &req.owner.to_string(),
            req.fixed_ip,
            req.pool,
        )
    })?;
    let bridge = nl.link(&net.bridge).await?.ok_or_else(|| {
        ResourceError::Check(format!("bridge {} of {net_addr} is missing", net.bridge))
    })?;
    let tap_link = match nl.link(req.tap).await? {
        Some(l) if l.made_by_fort() && l.kind.as_deref() == Some("tun") => l,
        Some(l) => {
            return Err(ResourceError::Check(foreign(
                &l.name,
                l.kind.as_deref(),
                req.owner,
            )))
        }
        None => {
            let name = req.tap.to_string();
            blocking(move || tap::create_persistent(&name)).await?;
            nl.finish_new(req.tap, &alias(ctx, req.owner)).await?
        }
    };
    if tap_link.controller != Some(bridge.index)
        || tap_link.isolated != Some(net.isolated)
        || !tap_link.up
    {
        nl.set_bridge_port(tap_link.index, bridge.index, net.isolated)
            .await?;
    }
    Ok(Attachment {
        network: req.network.to_string(),
        tap: req.tap.to_string(),
        ip: lease.ip,
        mac: lease.mac,
        gateway: net.gateway,
        prefix: net.cidr.prefix_len(),
        dns: net.dns,
    })
}

/// Remove the TAP (if fort made it) and release the lease. Idempotent.
pub async fn detach(
    ctx: &Ctx,
    nl: &Netlink,
    network: &str,
    owner: &Address,
    tap: &str,
) -> Result<(), ResourceError> {
    if let Some(l) = nl.link(tap).await? {
        if l.made_by_fort() {
            nl.delete(l.index).await?;
        }
    }
    ctx.with_store(|s| s.release_lease(network, &owner.to_string()))?;
    Ok(())
}

/// Is the attachment intact? (For the VM's observe.)
pub async fn observe_attachment(
    nl: &Netlink,
    a: &Attachment,
    bridge: &str,
    isolated: bool,
) -> Result<Option<String>, ResourceError> {
    let Some(t) = nl.link(&a.tap).await? else {
        return Ok(Some(format!("TAP {} is missing", a.tap)));
    };
    let Some(br) = nl.link(bridge).await? else {
        return Ok(Some(format!("bridge {bridge} is missing")));
    };
    if t.controller != Some(br.index) {
        return Ok(Some(format!("TAP {} is not a port of {bridge}", a.tap)));
    }
    if t.isolated != Some(isolated) {
        return Ok(Some(format!(
            "TAP {} isolation is {:?}, expected {isolated}",
            a.tap, t.isolated
        )));
    }
    Ok(None)
}
