//! Planning benchmark: load + validate a manifest of N resources (validation builds the
//! dependency graph and checks it for cycles), load the matching recorded state from SQLite,
//! and diff — what `fort plan` does except observing the host. Run:
//! `cargo bench -p fort --bench plan`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use fort::plan::{self, PlanInput, PlanOptions};
use fort::state::{Record, SqliteStore, StateStore};

// The same allocator as the `fort` binary, with the same option, so the figures are the
// binary's (see reconciler/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" fn lean_allocator() {
    // SAFETY: mi_option_set only stores an option value.
    unsafe { libmimalloc_sys::mi_option_set(4, 0) };
}

#[used]
#[unsafe(link_section = ".init_array")]
static LEAN_ALLOCATOR: extern "C" fn() = lean_allocator;

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

fn record_all(dir: &Path, m: &fort::manifest::Manifest) {
    let store = SqliteStore::open(dir).unwrap();
    for r in m.resources.values() {
        let rec = Record::applied(r, serde_json::json!({}), 1, 1);
        store.put(&rec, None, "create", "bench").unwrap();
    }
}

fn plan_once(file: &Path, state: &Path) -> (usize, Duration) {
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
    let elapsed = t.elapsed();
    if std::env::var_os("PLAN_BENCH_PHASES").is_some() {
        eprintln!(
            "  load+validate {:.1} ms, state {:.1} ms, graph+diff {:.1} ms",
            t_load.as_secs_f64() * 1e3,
            (t_state - t_load).as_secs_f64() * 1e3,
            (elapsed - t_state).as_secs_f64() * 1e3
        );
    }
    assert!(
        changes.is_empty(),
        "recorded state should match: {:?}",
        changes.first()
    );
    (m.resources.len(), elapsed)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let runs = 7;
    let mut results = Vec::new();
    for n in [1_000usize, 10_000, 20_000] {
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
                "  toml::from_str alone: {:.1} ms",
                median(t).as_secs_f64() * 1e3
            );
        }
        let mut times = Vec::new();
        let mut count = 0;
        for _ in 0..runs {
            let (c, d) = plan_once(&file, &state);
            count = c;
            times.push(d);
        }
        let med = median(times);
        println!(
            "plan {count:>6} resources: median {:>8.1} ms over {runs} runs",
            med.as_secs_f64() * 1e3
        );
        results.push(med);
    }
    println!(
        "ratio 10k/1k: {:.2} (linear = 10); ratio 20k/10k: {:.2} (linear = 2)",
        results[1].as_secs_f64() / results[0].as_secs_f64(),
        results[2].as_secs_f64() / results[1].as_secs_f64()
    );
}
