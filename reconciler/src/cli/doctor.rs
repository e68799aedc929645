//! `fort doctor`: what this host can do for fort, each failed check with its fix.

use serde::Serialize;

use super::{exit, session, Cli, CliError};
use crate::host::image::clone::{clone_method, Method};
use crate::host::net::{self, link::Netlink, nft};

#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(
    name: &'static str,
    level: Level,
    detail: impl Into<String>,
    fix: Option<String>,
) -> Check {
    Check {
        name,
        level,
        detail: detail.into(),
        fix,
    }
}

/// Every check, in the order they are printed.
pub async fn checks(cli: &Cli) -> Vec<Check> {
    let mut out = Vec::new();
    let manifest = session::load_manifest(cli).ok();
    let state_dir = session::state_dir(cli, manifest.as_ref());

    out.push(match Netlink::connect() {
        Ok(nl) => match nl.links().await {
            Ok(l) => check(
                "netlink",
                Level::Ok,
                format!("route netlink works ({} interfaces)", l.len()),
                None,
            ),
            Err(e) => check(
                "netlink",
                Level::Fail,
                crate::resources::error_chain(&e),
                Some("run fort as root (it needs CAP_NET_ADMIN)".into()),
            ),
        },
        Err(e) => check(
            "netlink",
            Level::Fail,
            crate::resources::error_chain(&e),
            Some("run fort as root (it needs CAP_NET_ADMIN)".into()),
        ),
    });

    let tun = std::path::Path::new("/dev/net/tun");
    out.push(
        match std::fs::OpenOptions::new().read(true).write(true).open(tun) {
            Ok(_) => check("tun", Level::Ok, "/dev/net/tun opens (TAPs for VMs)", None),
            Err(e) => check(
                "tun",
                Level::Fail,
                format!("cannot open /dev/net/tun: {e}"),
                Some("load the tun module: modprobe tun (and run fort as root)".into()),
            ),
        },
    );

    let chains = tokio::task::spawn_blocking(nft::forward_chains).await;
    match chains {
        Ok(Ok(chains)) => {
            out.push(check("nftables", Level::Ok, "nf_tables answers over netlink", None));
            let drops: Vec<_> = chains
                .iter()
                .filter(|c| c.drop_policy && !c.table.starts_with("fort-"))
                .collect();
            if drops.is_empty() {
                out.push(check("forward policy", Level::Ok, "no other table drops forwarded traffic by policy", None));
            }
            for c in drops {
                out.push(check(
                    "forward policy",
                    Level::Fail,
                    format!(
                        "table {} {} chain {} has policy drop on the forward hook: traffic from fort's bridges is dropped there even though fort's own table accepts it (Docker and ufw do this)",
                        c.family, c.table, c.chain
                    ),
                    Some(format!(
                        "accept fort's bridges in that chain: nft insert rule {} {} {} iifname \"fort-*\" accept; nft insert rule {} {} {} oifname \"fort-*\" ct state established,related accept (Docker: add them to DOCKER-USER; ufw: ufw route allow in on fort-NET)",
                        c.family, c.table, c.chain, c.family, c.table, c.chain
                    )),
                ));
            }
        }
        Ok(Err(e)) => out.push(check("nftables", Level::Fail, crate::resources::error_chain(&e), Some("run fort as root and make sure the nf_tables module is available: modprobe nf_tables".into()))),
        Err(e) => out.push(check("nftables", Level::Fail, e.to_string(), None)),
    }

    out.push(match net::ip_forward() {
        Ok(true) => check("ip_forward", Level::Ok, "net.ipv4.ip_forward = 1", None),
        Ok(false) => check("ip_forward", Level::Warn, "net.ipv4.ip_forward = 0: fort switches it on when it applies a network (and off again when it destroys the last one it switched it on for)", Some("to switch it on now: sysctl -w net.ipv4.ip_forward=1".into())),
        Err(e) => check("ip_forward", Level::Fail, crate::resources::error_chain(&e), None),
    });

    let drives = state_dir.join("drives");
    let (fs, method) = clone_method(&drives);
    out.push(match method {
        Method::Reflink => check("drive clones", Level::Ok, format!("reflink: {} is on {fs}, clones share the image's extents", drives.display()), None),
        _ => check("drive clones", Level::Warn, format!("sparse copy: {} is on {fs}, which cannot share extents; every drive copies its image's data", drives.display()), Some("put the state dir on btrfs or XFS (reflink=1) for instant copy-on-write clones".into())),
    });
    out
}

pub async fn doctor(cli: &Cli) -> Result<u8, CliError> {
    let checks = checks(cli).await;
    let failed = checks.iter().any(|c| c.level == Level::Fail);
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "checks": checks, "ok": !failed }))
                .unwrap_or_default()
        );
    } else {
        for c in &checks {
            let tag = match c.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            println!("{tag}  {}: {}", c.name, c.detail);
            if let Some(f) = &c.fix {
                println!("      fix: {f}");
            }
        }
    }
    Ok(if failed { exit::ERROR } else { exit::OK })
}
