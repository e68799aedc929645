//! Attaching VMs to a network: fort's `network::attach` (lease in SQLite, persistent TAP,
//! bridge port, isolation, up — all over netlink) for N VMs, against the same operations done
//! with `ip` child processes (`ip tuntap add`, `ip link set … master … up`, `ip link set …
//! type bridge_slave isolated on`), in the same run, in a fresh network namespace.
//! Run as root: `cargo bench -p fort --bench attach` (N = 100, or `ATTACH_BENCH_N`).

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fort::address::{Address, Kind};
use fort::host::net::link::Netlink;
use fort::resources::network::{attach, AttachRequest};
use fort::resources::{Ctx, ResourceKind};
use fort::state::{Record, SqliteStore, StateStore};

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

fn main() {
    let n: usize = std::env::var("ATTACH_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    // SAFETY: unshare(2) on this (the only) thread before any other thread exists.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "needs root: {}", std::io::Error::last_os_error());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("fort.toml");
    std::fs::write(
        &manifest,
        "[fort]\nversion = 1\n[network.lan]\ncidr = \"10.77.0.0/16\"\nisolated = true\n",
    )
    .unwrap();
    let m = fort::manifest::load(&manifest).unwrap();
    let net = &m.resources[&Address::new(Kind::Network, "lan")];
    let state = dir.path().join("state");
    let store = Arc::new(Mutex::new(SqliteStore::open(&state).unwrap()));
    let ctx = Ctx::new(state, store.clone(), false);

    let (fort_time, ip_time) = rt.block_on(async {
        let out = fort::resources::network::Network
            .apply(&ctx, net, None)
            .await
            .unwrap();
        store
            .lock()
            .unwrap()
            .put(&Record::applied(net, out, 1, 1), None, "create", "bench")
            .unwrap();
        let nl = Netlink::connect().unwrap();

        // Baseline first, on its own bridge, so both start from the same kind of state.
        ip(&["link", "add", "br-ip", "type", "bridge"]);
        ip(&["link", "set", "br-ip", "up"]);
        let t = Instant::now();
        for i in 0..n {
            let tap = format!("ipt{i}");
            ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
            ip(&["link", "set", &tap, "master", "br-ip", "up"]);
            ip(&[
                "link",
                "set",
                &tap,
                "type",
                "bridge_slave",
                "isolated",
                "on",
            ]);
        }
        let ip_time = t.elapsed();

        let t = Instant::now();
        for i in 0..n {
            let owner = Address::new(Kind::Vm, format!("v{i}"));
            let tap = format!("fort-v{i}");
            attach(
                &ctx,
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
            .unwrap();
        }
        let fort_time = t.elapsed();
        // Both did the real thing: n isolated ports on each bridge.
        let links = nl.links().await.unwrap();
        let br = links.iter().find(|l| l.name == "fort-lan").unwrap().index;
        let brip = links.iter().find(|l| l.name == "br-ip").unwrap().index;
        let ports = |b: u32| {
            links
                .iter()
                .filter(|l| l.controller == Some(b) && l.isolated == Some(true) && l.up)
                .count()
        };
        assert_eq!((ports(br), ports(brip)), (n, n));
        (fort_time, ip_time)
    });
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "attach {n} VMs, fort (netlink + leases): {:8.1} ms ({:.2} ms each)",
        ms(fort_time),
        ms(fort_time) / n as f64
    );
    println!(
        "attach {n} VMs, ip child processes:      {:8.1} ms ({:.2} ms each)",
        ms(ip_time),
        ms(ip_time) / n as f64
    );
    println!(
        "speed-up: {:.1}x",
        ip_time.as_secs_f64() / fort_time.as_secs_f64()
    );
}
