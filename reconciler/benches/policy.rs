//! Changing a network's egress policy while VMs are attached: the network resource's update
//! (`Network::apply` with the previous record, what `fort apply` runs for `~ network.NAME`:
//! the bridge checked, the nftables table replaced in one batch) for a network with N attached
//! VMs, against the same change on a network with none, in the same run, in a fresh network
//! namespace. The rules are per network, not per VM, so the two should cost the same.
//! Run as root: `cargo bench -p fort --bench policy` (N = 100, `POLICY_BENCH_N`; rounds = 40,
//! `POLICY_BENCH_RUNS`).

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fort::address::{Address, Kind};
use fort::host::net::link::Netlink;
use fort::resources::network::{attach, AttachRequest};
use fort::resources::{Ctx, ResourceKind};
use fort::state::{Record, SqliteStore, StateStore};

fn manifest(dir: &std::path::Path, policy: &str) -> fort::manifest::Manifest {
    let path = dir.join("fort.toml");
    std::fs::write(
        &path,
        format!(
            "[fort]\nversion = 1\n\
             [network.full]\ncidr = \"10.77.0.0/16\"\nisolated = true\n{policy}\n\
             [network.empty]\ncidr = \"10.78.0.0/16\"\nisolated = true\n{policy}\n"
        ),
    )
    .unwrap();
    fort::manifest::load(&path).unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::var("POLICY_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let runs: usize = std::env::var("POLICY_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    // SAFETY: unshare(2) on this (the only) thread before any other thread exists: the bench
    // works in a namespace of its own, which has no route anywhere.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "needs root: {}", std::io::Error::last_os_error());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Two policies to switch between: what a user edits (an allow list and a host port).
    let a = manifest(
        dir.path(),
        "allow = [\"198.51.100.0/24:443/tcp\"]\nhost_ports = [\"53/udp\"]",
    );
    let b = manifest(
        dir.path(),
        "allow = [\"198.51.100.0/24:443/tcp\", \"203.0.113.7/32\"]\ndeny = [\"203.0.113.9/32\"]\nhost_ports = [\"53\"]",
    );
    let state = dir.path().join("state");
    let store = Arc::new(Mutex::new(SqliteStore::open(&state).unwrap()));
    let ctx = Ctx::new(state, store.clone(), false);
    let addr = |name: &str| Address::new(Kind::Network, name);

    let (full, empty) = rt.block_on(async {
        let mut recs = std::collections::BTreeMap::new();
        for name in ["full", "empty"] {
            let net = &a.resources[&addr(name)];
            let out = fort::resources::network::Network
                .apply(&ctx, net, None)
                .await
                .unwrap();
            let rec = Record::applied(net, out, 1, 1);
            store
                .lock()
                .unwrap()
                .put(&rec, None, "create", "bench")
                .unwrap();
            recs.insert(name, rec);
        }
        let nl = Netlink::connect().unwrap();
        for i in 0..n {
            let owner = Address::new(Kind::Vm, format!("v{i}"));
            let tap = format!("fort-v{i}");
            attach(
                &ctx,
                &nl,
                &AttachRequest {
                    network: "full",
                    owner: &owner,
                    tap: &tap,
                    fixed_ip: None,
                    pool: None,
                },
            )
            .await
            .unwrap();
        }
        // Interleaved, so a noisy neighbour slows both alike.
        let (mut full, mut empty) = (Vec::new(), Vec::new());
        for round in 0..runs {
            let m = if round % 2 == 0 { &b } else { &a };
            for name in ["full", "empty"] {
                let net = &m.resources[&addr(name)];
                let t = Instant::now();
                let out = fort::resources::network::Network
                    .apply(&ctx, net, recs.get(name))
                    .await
                    .unwrap();
                let took = t.elapsed();
                let rec = Record::applied(net, out, 1, 1);
                // The change took: observing the table finds the new rules.
                let seen = fort::resources::network::Network
                    .observe(&ctx, &rec)
                    .await
                    .unwrap();
                assert_eq!(seen, fort::plan::Observation::Ok, "{name}");
                recs.insert(name, rec);
                if name == "full" {
                    full.push(took);
                } else {
                    empty.push(took);
                }
            }
        }
        // The VMs are still attached: n ports on the bridge.
        let links = nl.links().await.unwrap();
        let br = links.iter().find(|l| l.name == "fort-full").unwrap().index;
        assert_eq!(links.iter().filter(|l| l.controller == Some(br)).count(), n);
        (median(full), median(empty))
    });
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "policy change, network with {n} attached VMs: {:7.2} ms (median of {runs})",
        ms(full)
    );
    println!(
        "policy change, network with no VMs:          {:7.2} ms (median of {runs})",
        ms(empty)
    );
    println!(
        "ratio ({n} VMs / none): {:.2}",
        full.as_secs_f64() / empty.as_secs_f64()
    );
}
