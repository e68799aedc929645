//! Links, addresses, bridge ports and routes over rtnetlink.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoKind, InfoPortData, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, RouteMessageBuilder};

use super::NetError;

/// What fort needs to know about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `tun`, `veth`… (`None` for plain devices).
    pub kind: Option<String>,
    /// fort marks what it creates with an alias `fort:<address>`.
    pub alias: Option<String>,
    pub up: bool,
    /// The bridge it is a port of.
    pub controller: Option<u32>,
    /// `IFLA_BRPORT_ISOLATED`, for bridge ports.
    pub isolated: Option<bool>,
}

impl Link {
    pub fn made_by_fort(&self) -> bool {
        self.alias
            .as_deref()
            .is_some_and(|a| a.starts_with("fort:"))
    }
}

fn parse(msg: &LinkMessage) -> Link {
    let mut l = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        alias: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        controller: None,
        isolated: None,
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::IfAlias(s) => l.alias = Some(s.clone()),
            LinkAttribute::Controller(c) => l.controller = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(kind_name(k)),
                        LinkInfo::PortData(InfoPortData::BridgePort(ps)) => {
                            for p in ps {
                                if let InfoBridgePort::Isolated(b) = p {
                                    l.isolated = Some(*b);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Tun => "tun".into(),
        InfoKind::Veth => "veth".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// A route netlink connection (its reader runs on the current tokio runtime).
pub struct Netlink {
    handle: Handle,
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

/// ENODEV/ENOENT replies: the thing is gone.
fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ENODEV || m.raw_code() == -libc::ENOENT)
}

impl Netlink {
    pub fn connect() -> Result<Netlink, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn links(&self) -> Result<Vec<Link>, NetError> {
        let mut s = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(nl("cannot list links"))? {
            out.push(parse(&m));
        }
        Ok(out)
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>, NetError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(parse)),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(nl(format!("cannot look up {name}"))(e)),
        }
    }

    pub async fn create_bridge(&self, name: &str, alias: &str) -> Result<Link, NetError> {
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(nl(format!("cannot create bridge {name}")))?;
        self.finish_new(name, alias).await
    }

    /// Alias a new link as fort's and bring it up.
    pub async fn finish_new(&self, name: &str, alias: &str) -> Result<Link, NetError> {
        let l = self.link(name).await?.ok_or_else(|| {
            NetError::Conflict(format!("{name} vanished right after it was created"))
        })?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(l.index)
                    .alias(alias)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("cannot set up {name}")))?;
        Ok(Link {
            alias: Some(alias.to_string()),
            up: true,
            ..l
        })
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl(format!("cannot bring up link {index}")))
    }

    /// Delete a link; gone already is fine.
    pub async fn delete(&self, index: u32) -> Result<(), NetError> {
        match self.handle.link().del(index).execute().await {
            Err(e) if !is_gone(&e) => Err(nl(format!("cannot delete link {index}"))(e)),
            _ => Ok(()),
        }
    }

    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Net>, NetError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(nl("cannot list addresses"))? {
            for a in &m.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip))
                | AddressAttribute::Address(IpAddr::V4(ip)) = a
                {
                    if let Ok(n) = Ipv4Net::new(*ip, m.header.prefix_len) {
                        if !out.contains(&n) {
                            out.push(n);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    pub async fn add_ipv4_address(
        &self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetError> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .execute()
            .await
            .map_err(nl(format!("cannot add {ip}/{prefix} to link {index}")))
    }

    /// Make `port` a port of `bridge` with the given isolation, and up.
    pub async fn set_bridge_port(
        &self,
        port: u32,
        bridge: u32,
        isolated: bool,
    ) -> Result<(), NetError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(port)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("cannot attach link {port} to bridge {bridge}")))?;
        self.handle
            .link()
            .set_port(LinkBridgePort::new(port).isolated(isolated).build())
            .execute()
            .await
            .map_err(nl(format!("cannot set isolation on link {port}")))
    }

    /// IPv4 routes of the main table: destination and output interface.
    pub async fn ipv4_routes(&self) -> Result<Vec<(Ipv4Net, Option<u32>)>, NetError> {
        let mut s = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(nl("cannot list routes"))? {
            if m.header.table != 254 {
                continue;
            }
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut oif = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if let Ok(n) = Ipv4Net::new(dst, m.header.destination_prefix_length) {
                out.push((n, oif));
            }
        }
        Ok(out)
    }
}
