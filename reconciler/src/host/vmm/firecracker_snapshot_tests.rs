//! The snapshot requests against golden bodies written from Firecracker's documentation
//! (docs/snapshotting/snapshot-support.md, network-for-clones.md, the swagger), the HTTP
//! client against a stand-in server on a unix socket, the restore command lines, and the
//! snapshot files' handling.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::*;

fn golden(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .join(name);
    std::fs::read_to_string(&p).unwrap()
}

fn as_golden(r: &ApiRequest) -> Value {
    json!({"method": r.method, "path": r.path, "body": r.body})
}

#[test]
fn the_requests_are_the_documented_ones() {
    let j = SnapshotFiles::jailed();
    for (name, req) in [
        ("firecracker-snapshot-pause.json", pause()),
        ("firecracker-snapshot-resume.json", resume()),
        ("firecracker-snapshot-create.json", create(&j.state, &j.mem)),
        (
            "firecracker-snapshot-load.json",
            load(&j.state, &j.mem, true, &[]),
        ),
        (
            "firecracker-snapshot-load-overrides.json",
            load(&j.state, &j.mem, true, &[("eth0".into(), "fort-b".into())]),
        ),
    ] {
        let want: Value = serde_json::from_str(&golden(name)).unwrap();
        assert_eq!(as_golden(&req), want, "{name}");
    }
}
