//! Planning benchmark: load + validate a manifest of N resources (validation builds the
//! dependency graph and checks it for cycles), load the matching recorded state from SQLite,
//! diff, and look for leftovers of interrupted runs (one scan per state dir) — what
//! `fort plan` does except observing each recorded resource on the host. Run:
//! `cargo bench -p fort --bench plan`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use fort::plan::{self, PlanInput, PlanOptions};
use fort::state::{Record, SqliteStore, StateStore};

// The binary's allocator and options, so the figures are the binary's.
fort::lean_mimalloc!();

/// A manifest with `n` resources: shared assets, a template and a network, then VMs with
/// inline root drives (two resources each).
fn manifest(n: usize) -> String {
    let mut s = String::from(
        "[fort]\nversion = 1\n\n\
         [kernel.k]\nurl = \"/srv/vmlinux\"\n\n\
         [rootfs.r]\nurl = \"/srv/rootfs.tar\"\n\n\
         [template.t]\nrootfs = \"r\"\nsize = \"1GiB\"\n\n\
         [network.lan]\ncidr = \"10.0.0.0/16\"\nnat = true\n\n",
    );
    let vms = (n - 4) / 2;
    for i in 0..vms {
        let _ = write!(
            s,
            "[vm.v{i}]\nkernel = \"k\"\nroot = {{ template = \"t\", size = \"2GiB\" }}\nnetwork = \"lan\"\nmemory = \"256MiB\"\n\n"
        );
    }
    s
}

/// Outputs shaped like a real apply's for the kinds the orphan scan reads (VMs with their
/// processes and TAP, drives with their path), so the scan does its real per-record work.
fn outputs(dir: &Path, r: &fort::manifest::Resource, i: u32) -> serde_json::Value {
    let name = &r.address.name;
    match r.address.kind {
        fort::Kind::Vm => {
            let run = dir.join("run").join(name);
            serde_json::json!({
                "vmm": "qemu",
                "run_dir": run,
                "vsock_uds": run.join("vsock.sock"),
                "console_log": run.join("console.log"),
                "cid": 3 + i,
                "tap": {"network": "lan", "tap": format!("fort-{name}")},
                "started": {
                    "vmm": {"pid": 4_000_000 + 2 * i, "start_time": 1},
                    "helper": {"pid": 4_000_001 + 2 * i, "start_time": 1},
                },
                "helper": null,
                "network": {"network": "lan", "tap": format!("fort-{name}"), "ip": "10.0.0.2",
                            "mac": "02:fc:0a:00:00:02", "gateway": "10.0.0.1", "prefix": 16, "dns": []},
                "boot_ms": 3000,
                "booted": null,
            })
        }
        fort::Kind::Drive => serde_json::json!({
            "path": dir.join("drives").join(format!("{name}.ext4")),
            "size": 2u64 << 30,
            "method": "reflink",
            "image": dir.join("images/0.ext4"),
        }),
        _ => serde_json::json!({}),
    }
}

fn record_all(dir: &Path, m: &fort::manifest::Manifest) {
    let store = SqliteStore::open(dir).unwrap();
    // PLAN_BENCH_OUTPUTS=empty records `{}` (the benchmark before the leftover scan).
    let empty = std::env::var("PLAN_BENCH_OUTPUTS").is_ok_and(|v| v == "empty");
    for (i, r) in m.resources.values().enumerate() {
        let out = if empty {
            serde_json::json!({})
        } else {
            outputs(dir, r, i as u32)
        };
        if !empty && r.address.kind == fort::Kind::Vm {
            // What a real fleet has beside its rows: a run dir and a lease per VM (the scan
            // lists run/ and checks every lease's owner).
            std::fs::create_dir_all(dir.join("run").join(&r.address.name)).unwrap();
            store
                .lease(
                    "lan",
                    "10.0.0.0/16".parse().unwrap(),
                    &r.address.to_string(),
                    None,
                    None,
                )
                .unwrap();
        }
        let rec = Record::applied(r, out, 1, 1);
        store.put(&rec, None, "create", "bench").unwrap();
    }
}

fn minor_faults() -> i64 {
    // SAFETY: rusage is plain integers, for which all-zero is valid.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_minflt
}

fn plan_once(file: &Path, state: &Path) -> (usize, Duration) {
    let faults = minor_faults();
    let t = Instant::now();
    let m = fort::manifest::load(file).unwrap();
    let t_load = t.elapsed();
    let store = SqliteStore::open_readonly(state).unwrap();
    let recorded = store.resources().unwrap();
    let t_state = t.elapsed();
    let observed = BTreeMap::new();
    let opts = PlanOptions::default();
    let input = PlanInput {
        desired: &m.resources,
        recorded: &recorded,
        observed: &observed,
        options: &opts,
    };
    let (changes, _) = plan::diff(&input, &fort::resources::kind).unwrap();
    let t_diff = t.elapsed();
    // The leftover scan `fort plan` runs once per state dir: /proc, links, directories.
    let ctx = fort::resources::Ctx::new(
        state.to_path_buf(),
        std::sync::Arc::new(std::sync::Mutex::new(store)),
        false,
    );
    let orphans = runtime()
        .block_on(fort::orphans::scan(&ctx, &recorded))
        .unwrap();
    let elapsed = t.elapsed();
    if std::env::var_os("PLAN_BENCH_PHASES").is_some() {
        eprintln!(
            "  load+validate {:.1} ms, state {:.1} ms, graph+diff {:.1} ms, leftover scan {:.1} ms, {} page faults",
            t_load.as_secs_f64() * 1e3,
            (t_state - t_load).as_secs_f64() * 1e3,
            (t_diff - t_state).as_secs_f64() * 1e3,
            (elapsed - t_diff).as_secs_f64() * 1e3,
            minor_faults() - faults
        );
    }
    assert!(
        changes.is_empty(),
        "recorded state should match: {:?}",
        changes.first()
    );
    // Nothing runs and no interface exists, but the records name them: no leftovers.
    assert!(orphans.is_empty(), "{orphans:?}");
    (m.resources.len(), elapsed)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let runs = std::env::var("PLAN_BENCH_RUNS").map_or(15, |v| v.parse().unwrap());
    // PLAN_BENCH_SIZES=10000 runs one size (for profiling); the ratios need all three.
    let sizes: Vec<usize> = match std::env::var("PLAN_BENCH_SIZES") {
        Ok(v) => v.split(',').map(|n| n.trim().parse().unwrap()).collect(),
        Err(_) => vec![1_000, 10_000, 20_000],
    };
    let mut cases = Vec::new();
    for &n in &sizes {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fort.toml");
        std::fs::write(&file, manifest(n)).unwrap();
        let m = fort::manifest::load(&file).unwrap();
        let state = dir.path().join("state");
        record_all(&state, &m);
        if std::env::var_os("PLAN_BENCH_PHASES").is_some() {
            let text = std::fs::read_to_string(&file).unwrap();
            let mut t = Vec::new();
            for _ in 0..runs {
                let start = Instant::now();
                let v: toml::Table = toml::from_str(&text).unwrap();
                t.push(start.elapsed());
                drop(v);
            }
            eprintln!(
                "  {n}: toml::from_str alone: {:.1} ms",
                median(t).as_secs_f64() * 1e3
            );
        }
        cases.push((dir, file, state));
    }
    // Rounds run every size once, in turn, so a noisy neighbour slows all sizes alike; the
    // ratios are the medians of the per-round ratios.
    // PLAN_BENCH_SEQUENTIAL=1 instead runs all rounds of one size before the next, so the small
    // case finds its data in the CPU caches (the method of the first measurements).
    let sequential = std::env::var_os("PLAN_BENCH_SEQUENTIAL").is_some();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); sizes.len()];
    let mut counts = vec![0; sizes.len()];
    let order: Vec<(usize, usize)> = if sequential {
        (0..cases.len())
            .flat_map(|i| (0..runs).map(move |r| (r, i)))
            .collect()
    } else {
        (0..runs)
            .flat_map(|r| (0..cases.len()).map(move |i| (r, i)))
            .collect()
    };
    for (_, i) in order {
        let (_, file, state) = &cases[i];
        let (c, d) = plan_once(file, state);
        counts[i] = c;
        times[i].push(d);
    }
    for (i, t) in times.iter().enumerate() {
        let sorted = {
            let mut t = t.clone();
            t.sort();
            t
        };
        println!(
            "plan {:>6} resources: median {:>8.1} ms over {runs} runs (min {:.1}, max {:.1})",
            counts[i],
            median(t.clone()).as_secs_f64() * 1e3,
            sorted[0].as_secs_f64() * 1e3,
            sorted[sorted.len() - 1].as_secs_f64() * 1e3
        );
    }
    if sizes != [1_000, 10_000, 20_000] {
        return;
    }
    let ratio = |a: usize, b: usize| {
        median(
            (0..runs)
                .map(|r| times[a][r].as_secs_f64() / times[b][r].as_secs_f64())
                .collect(),
        )
    };
    println!(
        "ratio 10k/1k: {:.2} (linear = 10); ratio 20k/10k: {:.2} (linear = 2); medians of per-round ratios",
        ratio(1, 0),
        ratio(2, 1)
    );
}
