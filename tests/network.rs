//! Networks for real, each test in a fresh network namespace: the bridge, fort's nftables
//! table and ip_forward created, observed, repaired and destroyed by the `fort` binary, and
//! checked through netlink; VM attachments (persistent TAPs on the bridge) carrying real
//! frames, with and without port isolation.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fort::Workspace;
use common::netns::{
    arp_of, arp_request, in_netns, mac_bytes, recv_matching, runtime, send, udp_frame,
};
use fort::address::{Address, Kind};
use fort::host::net::link::{Link, Netlink};
use fort::host::net::{self, nft, tap};
use fort::resources::network::{attach, detach, AttachRequest};
use fort::resources::Ctx;
use fort::state::SqliteStore;

const LAN: &str =
    "[network.lan]\ncidr = \"10.77.0.0/24\"\nnat = true\nisolated = true\ndns = [\"192.0.2.53\"]\n";

fn link(name: &str) -> Option<Link> {
    runtime().block_on(async { Netlink::connect().unwrap().link(name).await.unwrap() })
}

fn link_names() -> Vec<String> {
    let mut v: Vec<String> = runtime().block_on(async {
        Netlink::connect()
            .unwrap()
            .links()
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect()
    });
    v.sort();
    v
}

fn addresses(name: &str) -> Vec<String> {
    let l = link(name).unwrap();
    runtime().block_on(async {
        Netlink::connect()
            .unwrap()
            .ipv4_addresses(l.index)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.to_string())
            .collect()
    })
}

fn rules(table: &str) -> Option<Vec<String>> {
    nft::rule_comments(table).unwrap().map(|mut v| {
        v.sort();
        v
    })
}

#[test]
fn a_network_is_created_observed_repaired_and_destroyed_over_netlink() {
    in_netns(|| {
        let ws = Workspace::new();
        ws.write_manifest(LAN);
        assert!(
            !net::ip_forward().unwrap(),
            "a fresh namespace forwards nothing"
        );
        let before = link_names();
        ws.run(&["apply", "--yes"]).ok();

        let br = link("fort-lan").expect("the bridge exists");
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        assert!(br.up);
        assert_eq!(
            br.alias,
            Some(format!(
                "fort:network.lan@{}",
                fort::resources::state_id(&ws.state_dir())
            ))
        );
        assert_eq!(addresses("fort-lan"), ["10.77.0.1/24"]);
        assert_eq!(
            rules("fort-lan"),
            Some(vec![
                // NAT, so egress = "internet": public addresses, the resolver, nothing else;
                // and the host is closed but for ICMP and replies.
                "fort:dns 192.0.2.53".to_string(),
                "fort:dns 192.0.2.53".into(),
                "fort:established".into(),
                "fort:from-bridge".into(),
                // The guard of route_localnet (published ports on 127.0.0.1).
                "fort:guest-loopback-destination".into(),
                "fort:guest-loopback-source".into(),
                "fort:host-deny".into(),
                "fort:host-established".into(),
                "fort:host-icmp".into(),
                "fort:loopback-masquerade".into(),
                "fort:masquerade".into(),
                "fort:no-fort-networks".into(),
                "fort:not-internet 0.0.0.0/8".into(),
                "fort:not-internet 10.0.0.0/8".into(),
                "fort:not-internet 100.64.0.0/10".into(),
                "fort:not-internet 127.0.0.0/8".into(),
                "fort:not-internet 169.254.0.0/16".into(),
                "fort:not-internet 172.16.0.0/12".into(),
                "fort:not-internet 192.168.0.0/16".into(),
                "fort:not-internet 224.0.0.0/4".into(),
                "fort:not-internet 240.0.0.0/4".into(),
                // Bridged guest to guest (br_netfilter) is not egress.
                "fort:same-network".into(),
            ])
        );
        let hooks = nft::forward_chains().unwrap();
        assert!(
            hooks
                .iter()
                .any(|c| c.table == "fort-lan" && c.chain == "forward" && !c.drop_policy),
            "{hooks:?}"
        );
        assert!(net::ip_forward().unwrap());
        let out: serde_json::Value =
            serde_json::from_str(&ws.run(&["state", "show", "network.lan", "--json"]).stdout)
                .unwrap();
        assert_eq!(out["outputs"]["bridge"], "fort-lan");
        assert_eq!(out["outputs"]["table"], "fort-lan");
        assert_eq!(out["outputs"]["dns"], serde_json::json!(["192.0.2.53"]));

        // Idempotent: nothing to do, and a second apply changes nothing.
        ws.run(&["plan", "--detailed-exitcode"]).ok();
        let again = ws.run(&["apply", "--yes"]);
        again.ok();
        assert!(again.stdout.contains("No changes."), "{}", again.stdout);
        assert_eq!(
            link("fort-lan").unwrap().index,
            br.index,
            "the bridge was not re-created"
        );

        // Drift, each shown with its reason and repaired.
        let drift = |reason: &str| {
            let p = ws.run(&["plan", "--detailed-exitcode"]);
            assert_eq!(p.code, 2, "{}", p.stdout);
            assert!(
                p.stdout
                    .contains(&format!("      reason: drift: {reason}\n")),
                "{}",
                p.stdout
            );
            ws.run(&["apply", "--yes"]).ok();
            ws.run(&["plan", "--detailed-exitcode"]).ok();
        };
        nft::delete("fort-lan").unwrap();
        drift("nftables table fort-lan is missing");
        assert_eq!(rules("fort-lan").unwrap().len(), 22);
        assert_eq!(net::ipv6_disabled("fort-lan"), Some(true));
        std::fs::write("/proc/sys/net/ipv6/conf/fort-lan/disable_ipv6", "0").unwrap();
        drift("IPv6 is on on fort-lan (guests could reach the host over it)");
        assert_eq!(net::ipv6_disabled("fort-lan"), Some(true));
        assert_eq!(net::route_localnet("fort-lan"), Some(true));
        std::fs::write("/proc/sys/net/ipv4/conf/fort-lan/route_localnet", "0").unwrap();
        drift("route_localnet is off on fort-lan (published ports are not reachable on 127.0.0.1)");
        assert_eq!(net::route_localnet("fort-lan"), Some(true));
        net::set_ip_forward(false).unwrap();
        drift("net.ipv4.ip_forward is 0 (NAT and forwarding need it)");
        assert!(net::ip_forward().unwrap());
        let idx = link("fort-lan").unwrap().index;
        runtime().block_on(async {
            let nl = Netlink::connect().unwrap();
            let addr = nl.ipv4_addresses(idx).await.unwrap();
            assert_eq!(addr.len(), 1);
        });
        runtime().block_on(async { Netlink::connect().unwrap().delete(idx).await.unwrap() });
        drift("bridge fort-lan is missing");
        assert!(link("fort-lan").unwrap().up);
        assert_eq!(addresses("fort-lan"), ["10.77.0.1/24"]);

        // Destroy leaves the namespace as it was.
        ws.run(&["destroy", "--yes"]).ok();
        assert_eq!(link_names(), before);
        assert_eq!(rules("fort-lan"), None);
        assert!(
            !net::ip_forward().unwrap(),
            "fort switched forwarding on, so it switches it off"
        );
        assert_eq!(
            ws.run(&["state", "list"]).stdout.trim(),
            "No resources recorded."
        );
    });
}

/// Attach `vm.NAME` (TAP `fort-NAME`) to network.lan the way the VM kind does.
fn attach_vm(ctx: &Ctx, name: &str) -> fort::resources::network::Attachment {
    let owner = Address::new(Kind::Vm, name);
    let tap = format!("fort-{name}");
    runtime().block_on(async {
        let nl = Netlink::connect().unwrap();
        attach(
            ctx,
            &nl,
            &AttachRequest {
                network: "lan",
                owner: &owner,
                tap: &tap,
                fixed_ip: None,
                pool: None,
            },
        )
        .await
        .unwrap()
    })
}

fn ctx(ws: &Workspace) -> Ctx {
    let store = SqliteStore::open(&ws.state_dir()).unwrap();
    Ctx::new(ws.state_dir(), Arc::new(Mutex::new(store)), false)
}

#[test]
fn taps_on_the_bridge_carry_frames_and_isolation_is_the_port_flag() {
    in_netns(|| {
        let ws = Workspace::new();
        ws.write_manifest(LAN);
        ws.run(&["apply", "--yes"]).ok();
        let ctx = ctx(&ws);
        let a = attach_vm(&ctx, "a");
        let b = attach_vm(&ctx, "b");
        assert_eq!(
            (a.ip, a.mac.as_str()),
            (Ipv4Addr::new(10, 77, 0, 2), "02:fc:0a:4d:00:02")
        );
        assert_eq!(
            (b.ip, b.mac.as_str()),
            (Ipv4Addr::new(10, 77, 0, 3), "02:fc:0a:4d:00:03")
        );
        assert_eq!((a.gateway, a.prefix), (Ipv4Addr::new(10, 77, 0, 1), 24));
        // Attaching again is a no-op with the same answer.
        assert_eq!(attach_vm(&ctx, "a"), a);
        let br = link("fort-lan").unwrap();
        for t in ["fort-a", "fort-b"] {
            let l = link(t).unwrap();
            assert_eq!(l.kind.as_deref(), Some("tun"));
            assert_eq!(l.controller, Some(br.index), "{t} is a port of the bridge");
            assert_eq!(l.isolated, Some(true));
            assert!(l.up);
        }

        // The VMM's side: open the TAPs and exchange real frames through the bridge.
        let mut qa = tap::open("fort-a").unwrap();
        let mut qb = tap::open("fort-b").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        send(&mut qa, &arp_request(mac_bytes(&a.mac), a.ip, a.gateway));
        let reply = recv_matching(&mut qa, Duration::from_secs(3), |f| {
            arp_of(f) == Some((2, a.gateway, a.ip))
        });
        assert!(reply.is_some(), "no ARP reply from the gateway");
        // Isolated ports: b never sees a's broadcast.
        send(&mut qa, &arp_request(mac_bytes(&a.mac), a.ip, b.ip));
        let seen = recv_matching(&mut qb, Duration::from_millis(700), |f| {
            arp_of(f) == Some((1, a.ip, b.ip))
        });
        assert!(
            seen.is_none(),
            "an isolated port received another port's broadcast"
        );

        // Not isolated: the network's update flips the flag on existing ports, and b hears a.
        ws.write_manifest(&LAN.replace("isolated = true", "isolated = false"));
        // Targeted: the hand-made attachments above have no VM records, so an untargeted
        // apply would remove them as leftovers.
        let r = ws.run(&["apply", "--yes", "--target", "network.lan"]);
        r.ok();
        assert!(
            r.stdout
                .contains("  ~ network.lan\n      ~ isolated: true → false\n"),
            "{}",
            r.stdout
        );
        assert_eq!(link("fort-a").unwrap().isolated, Some(false));
        send(&mut qa, &arp_request(mac_bytes(&a.mac), a.ip, b.ip));
        let seen = recv_matching(&mut qb, Duration::from_secs(3), |f| {
            arp_of(f) == Some((1, a.ip, b.ip))
        });
        assert!(
            seen.is_some(),
            "b did not receive a's broadcast on a non-isolated bridge"
        );
        drop((qa, qb));

        // A TAP deleted behind fort's back is drift the VM's observe reports; attaching again
        // (what the VM's apply does) repairs it with the same address.
        let gone = link("fort-b").unwrap().index;
        runtime().block_on(async { Netlink::connect().unwrap().delete(gone).await.unwrap() });
        let seen = runtime().block_on(async {
            let nl = Netlink::connect().unwrap();
            fort::resources::network::observe_attachment(&nl, &b, "fort-lan", false)
                .await
                .unwrap()
        });
        assert_eq!(seen.as_deref(), Some("TAP fort-b is missing"));
        assert_eq!(attach_vm(&ctx, "b"), b);
        assert_eq!(link("fort-b").unwrap().isolated, Some(false));

        // Detach: TAPs gone, leases released (and handed out again from the start).
        runtime().block_on(async {
            let nl = Netlink::connect().unwrap();
            for n in ["a", "b"] {
                detach(
                    &ctx,
                    &nl,
                    "lan",
                    &Address::new(Kind::Vm, n),
                    &format!("fort-{n}"),
                )
                .await
                .unwrap();
            }
        });
        assert!(link("fort-a").is_none() && link("fort-b").is_none());
        assert_eq!(attach_vm(&ctx, "c").ip, Ipv4Addr::new(10, 77, 0, 2));
        ws.run(&["plan", "--detailed-exitcode", "--target", "network.lan"])
            .ok();
        // Untargeted, vm.c's lease is a leftover: nobody records vm.c.
        let plan = ws.run(&["plan", "--detailed-exitcode"]);
        plan.code(2);
        assert!(
            plan.stdout.contains("  - leftover: lease 10.77.0.2 of network.lan held for vm.c\n      reason: vm.c is not recorded: it will be released\n"),
            "{}",
            plan.stdout
        );
    });
}

#[test]
fn foreign_names_and_host_routes_are_refused_at_plan_time_leaving_the_host_alone() {
    in_netns(|| {
        let ws = Workspace::new();
        ws.write_manifest(LAN);
        // Someone else's bridge with fort's name.
        let foreign = runtime().block_on(async {
            Netlink::connect()
                .unwrap()
                .create_bridge("fort-lan", "docker")
                .await
                .unwrap()
        });
        for cmd in [&["plan"][..], &["apply", "--yes"]] {
            let r = ws.run(cmd);
            assert_eq!(r.code, 1, "{}", r.stdout);
            assert!(r.stderr.contains("error: network.lan: an interface named fort-lan (bridge) already exists and was not created by fort; fort never adopts interfaces: remove or rename it, or rename network.lan"), "{}", r.stderr);
        }
        assert_eq!(
            link("fort-lan").unwrap().index,
            foreign.index,
            "left as it was"
        );
        assert_eq!(rules("fort-lan"), None);
        assert!(!net::ip_forward().unwrap());
        runtime().block_on(async {
            Netlink::connect()
                .unwrap()
                .delete(foreign.index)
                .await
                .unwrap()
        });

        // A route the host already has over the same range.
        runtime().block_on(async {
            let nl = Netlink::connect().unwrap();
            nl.create_bridge("uplink0", "test").await.unwrap();
            let l = nl.link("uplink0").await.unwrap().unwrap();
            nl.add_ipv4_address(l.index, Ipv4Addr::new(10, 77, 5, 1), 16)
                .await
                .unwrap();
        });
        let r = ws.run(&["plan"]);
        assert_eq!(r.code, 1, "{}", r.stdout);
        assert!(r.stderr.contains("error: network.lan: cidr 10.77.0.0/24 overlaps the host route 10.77.0.0/16 (dev uplink0): choose a range the host does not use"), "{}", r.stderr);
        assert_eq!(
            ws.run(&["state", "list"]).stdout.trim(),
            "No resources recorded."
        );
        assert!(link("fort-lan").is_none());
    });
}

/// A table `ip NAME` owned by this socket (NFT_TABLE_F_OWNER): nobody else may change it
/// while the socket is open, and it vanishes when the socket closes.
struct OwnedTable(std::ffi::CString);

// SAFETY: `write` builds exactly one NEWTABLE message into a buffer of nft_nlmsg_maxsize().
unsafe impl nftnl::NlMsg for OwnedTable {
    unsafe fn write(&self, buf: *mut std::ffi::c_void, seq: u32, _t: nftnl::MsgType) {
        use nftnl::nftnl_sys as sys;
        // SAFETY: libnftnl calls on a table object we allocate and free here.
        unsafe {
            let t = sys::nftnl_table_alloc();
            sys::nftnl_table_set_str(t, sys::NFTNL_TABLE_NAME as u16, self.0.as_ptr());
            sys::nftnl_table_set_u32(t, sys::NFTNL_TABLE_FLAGS as u16, 2);
            let h = sys::nftnl_nlmsg_build_hdr(
                buf.cast(),
                libc::NFT_MSG_NEWTABLE as u16,
                libc::NFPROTO_IPV4 as u16,
                (libc::NLM_F_CREATE | libc::NLM_F_ACK) as u16,
                seq,
            );
            sys::nftnl_table_nlmsg_build_payload(h, t);
            sys::nftnl_table_free(t);
        }
    }
}

#[test]
fn a_network_that_fails_half_way_leaves_nothing_behind() {
    in_netns(|| {
        let ws = Workspace::new();
        ws.write_manifest(LAN);
        let owner = net::nl::NfSocket::open().unwrap();
        let mut batch = nftnl::Batch::new();
        batch.add(
            &OwnedTable(std::ffi::CString::new("fort-lan").unwrap()),
            nftnl::MsgType::Add,
        );
        for chunk in &batch.finalize() {
            owner.send(chunk).unwrap();
        }
        owner.recv_until(net::nl::is_ack).unwrap();
        let before = link_names();

        let r = ws.run(&["apply", "--yes"]);
        assert_eq!(r.code, 1, "{}", r.stdout);
        assert!(r.stdout.contains("network.lan: creating failed: nftables refused the change: Operation not permitted (os error 1)"), "{}", r.stdout);
        assert_eq!(
            link_names(),
            before,
            "the bridge made by the failed apply was removed"
        );
        assert!(!net::ip_forward().unwrap());

        // Once the obstacle is gone, the next apply converges.
        drop(owner);
        ws.run(&["apply", "--yes"]).ok();
        ws.run(&["plan", "--detailed-exitcode"]).ok();
        assert_eq!(rules("fort-lan").unwrap().len(), 22);
    });
}

#[test]
fn a_policy_change_the_kernel_refuses_leaves_the_old_rules_and_stays_pending() {
    in_netns(|| {
        let ws = Workspace::new();
        ws.write_manifest(&format!("{LAN}allow = [\"198.51.100.0/24\"]\n"));
        ws.run(&["apply", "--yes"]).ok();
        let before = rules("fort-lan").unwrap();
        assert!(before.contains(&"fort:allow 198.51.100.0/24".to_string()));

        ws.write_manifest(&format!(
            "{LAN}allow = [\"203.0.113.0/24:443/tcp\"]\nhost_ports = [\"53/udp\"]\n"
        ));
        let out = ws
            .command(&["apply", "--yes"])
            .env("FORT_NFT_REFUSE", "1")
            .output()
            .unwrap();
        let r = common::fort::Run::from(out);
        assert_eq!(r.code, 1, "{}", r.stdout);
        assert!(
            r.stdout
                .contains("network.lan: updating failed: nftables refused the change"),
            "{}",
            r.stdout
        );
        // One transaction: not one rule of the new policy went in, none of the old went out.
        assert_eq!(rules("fort-lan").unwrap(), before);
        let plan = ws.run(&["plan", "--detailed-exitcode"]);
        plan.code(2);
        assert!(plan.stdout.contains("  ~ network.lan\n"), "{}", plan.stdout);
        for line in [
            "      reason: the last apply failed: nftables refused the change: No such file or directory (os error 2)\n",
            "      ~ allow: [\"198.51.100.0/24\"] → [\"203.0.113.0/24:443/tcp\"]\n",
            "      host: closed to guests except 53/udp (ICMP and replies pass)\n",
        ] {
            assert!(plan.stdout.contains(line), "{line}\n{}", plan.stdout);
        }

        ws.run(&["apply", "--yes"]).ok();
        ws.run(&["plan", "--detailed-exitcode"]).ok();
        let after = rules("fort-lan").unwrap();
        assert!(after.contains(&"fort:allow 203.0.113.0/24:443/tcp".to_string()));
        assert!(after.contains(&"fort:host-port 53/udp".to_string()));
        assert!(!after.contains(&"fort:allow 198.51.100.0/24".to_string()));
    });
}

#[test]
fn doctor_names_a_foreign_forward_drop_policy_and_its_fix() {
    in_netns(|| {
        let ws = Workspace::new();
        ws.write_manifest(LAN);
        let r = ws.run(&["doctor"]);
        r.ok();
        assert!(
            r.stdout.contains(
                "ok    forward policy: no other table drops forwarded traffic by policy\n"
            ),
            "{}",
            r.stdout
        );
        assert!(
            r.stdout
                .contains("warn  ip_forward: net.ipv4.ip_forward = 0"),
            "{}",
            r.stdout
        );
        // The whole host: VMMs with their versions, what /dev/kvm is, capacity for the manifest.
        for line in [
            "ok    qemu: QEMU emulator version ",
            "ok    vhost-device-vsock: vhost-device-vsock 0.",
            "  kvm: /dev/kvm",
            "ok    memory: the manifest's VMs need 0 MiB; ",
            "ok    disk: drives and images at full size: 0 MiB; ",
        ] {
            assert!(r.stdout.contains(line), "{line}\n{}", r.stdout);
        }

        // What Docker or ufw leave behind: a forward chain with policy drop in their table.
        let name = std::ffi::CString::new("filter").unwrap();
        let table = nftnl::Table::new(&name, nftnl::ProtoFamily::Ipv4);
        let chain_name = std::ffi::CString::new("FORWARD").unwrap();
        let mut chain = nftnl::Chain::new(&chain_name, &table);
        chain.set_hook(nftnl::Hook::Forward, 0);
        chain.set_policy(nftnl::Policy::Drop);
        let mut batch = nftnl::Batch::new();
        batch.add(&table, nftnl::MsgType::Add);
        batch.add(&chain, nftnl::MsgType::Add);
        let sock = net::nl::NfSocket::open().unwrap();
        for chunk in &batch.finalize() {
            sock.send(chunk).unwrap();
        }
        let mut acks = 0;
        sock.recv_until(|m| {
            acks += usize::from(net::nl::is_ack(m));
            acks == 2
        })
        .unwrap();

        let r = ws.run(&["doctor"]);
        assert_eq!(r.code, 1, "{}", r.stdout);
        assert!(r.stdout.contains("FAIL  forward policy: table ip filter chain FORWARD has policy drop on the forward hook: traffic from fort's bridges is dropped there even though fort's own table accepts it (Docker and ufw do this)\n      fix: accept fort's bridges in that chain: nft insert rule ip filter FORWARD iifname \"fort-*\" accept; nft insert rule ip filter FORWARD oifname \"fort-*\" ct state established,related accept (Docker: add them to DOCKER-USER; ufw: ufw route allow in on fort-NET)\n"), "{}", r.stdout);
        // fort's own table (accept policy) is never the culprit.
        ws.run(&["apply", "--yes"]).ok();
        let j: serde_json::Value =
            serde_json::from_str(&ws.run(&["doctor", "--json"]).stdout).unwrap();
        let fails: Vec<&str> = j["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["level"] == "fail")
            .map(|c| c["detail"].as_str().unwrap())
            .collect();
        assert_eq!(fails.len(), 1, "{fails:?}");
        assert!(fails[0].starts_with("table ip filter chain FORWARD"));
        ws.run(&["destroy", "--yes"]).ok();
    });
}

/// With br_netfilter (`bridge-nf-call-iptables = 1`, Docker's hosts have it), frames bridged
/// between two ports of one bridge pass the IP forward hook, where fort's fence would drop
/// them under `egress = "none"` (and `"internet"`'s no-other-fort-networks rule): guests of a
/// non-isolated network still reach each other, as they do without it.
#[test]
fn guests_of_one_network_reach_each_other_with_br_netfilter_on() {
    in_netns(|| {
        let knob = "/proc/sys/net/bridge/bridge-nf-call-iptables";
        // A kernel without br_netfilter cannot show the problem; it must be there to test it.
        let _ = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status();
        std::fs::write(knob, "1").unwrap_or_else(|e| {
            panic!("{knob}: {e} (br_netfilter is needed for this test: modprobe br_netfilter)")
        });
        let ws = Workspace::new();
        ws.write_manifest(
            "[network.lan]\ncidr = \"10.77.0.0/24\"\nnat = false\nisolated = false\negress = \"none\"\n",
        );
        ws.run(&["apply", "--yes"]).ok();
        let ctx = ctx(&ws);
        let a = attach_vm(&ctx, "a");
        let b = attach_vm(&ctx, "b");
        let mut qa = tap::open("fort-a").unwrap();
        let mut qb = tap::open("fort-b").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let is_ours =
            |f: &[u8]| f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[26..30] == a.ip.octets();
        let frame = udp_frame(mac_bytes(&a.mac), mac_bytes(&b.mac), a.ip, b.ip);
        let mut seen = None;
        // The first frames may be flooded before the bridge learns b's port: a few tries.
        for _ in 0..5 {
            send(&mut qa, &frame);
            seen = recv_matching(&mut qb, Duration::from_millis(500), is_ours);
            if seen.is_some() {
                break;
            }
        }
        assert!(
            seen.is_some(),
            "b did not receive a's UDP datagram on a non-isolated network with br_netfilter on; the table:\n{:?}",
            rules("fort-lan")
        );
        // The fence is still there for what leaves the network.
        let table = rules("fort-lan").unwrap();
        assert!(table.contains(&"fort:egress-none".to_string()), "{table:?}");
        drop((qa, qb));
    });
}
