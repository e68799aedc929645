//! Bad OCI images and manifests, against a real registry on loopback: each refused with its
//! exact error, nothing cached under a bad digest, nothing built or registered, nothing
//! written outside the image.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::fort::Workspace;
use common::registry::{
    both, digest, one_file_image, rootfs_and_template, run, tar_layer, Auth, Entry, Image,
    Registry, LAYER_TAR,
};
use serde_json::json;

/// Apply fails, leaving no rootfs or template recorded and no image built.
#[track_caller]
fn refused(ws: &Workspace, want: &str) {
    let r = run(ws, &["apply", "--yes"]);
    r.code(1);
    assert!(both(&r).contains(want), "{want}\n{}", both(&r));
    let list = run(ws, &["state", "list"]).ok().stdout.clone();
    assert!(
        !list.contains("rootfs.app") && !list.contains("template.t"),
        "{list}"
    );
    let images: Vec<_> = std::fs::read_dir(ws.state_dir().join("images"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "ext4"))
                .collect()
        })
        .unwrap_or_default();
    assert!(images.is_empty(), "{images:?}");
}

#[test]
fn bad_images_are_refused_with_exact_errors_and_nothing_built() {
    let reg = Registry::start(Auth::Anonymous);
    let host = reg.host();

    // 404 for the tag: at plan time.
    reg.push("app", "v1", &one_file_image("etc/x", "x\n"));
    let ws = Workspace::new();
    ws.write_manifest(&rootfs_and_template(&format!("{host}/app:v9"), ""));
    let r = run(&ws, &["plan"]);
    r.code(1);
    assert!(
        r.stderr.contains(&format!(
            "error: rootfs.app: {host}/app: tag `v9` not found (HTTP 404)"
        )),
        "{}",
        r.stderr
    );

    // An index without linux/amd64: at plan time, listing what it has.
    let img = one_file_image("etc/x", "x\n");
    reg.push_index("arm", "v1", &[("linux/arm64", &img), ("linux/s390x", &img)]);
    let ws = Workspace::new();
    ws.write_manifest(&rootfs_and_template(&format!("{host}/arm:v1"), ""));
    let r = run(&ws, &["plan"]);
    r.code(1);
    assert!(
        r.stderr.contains(&format!(
            "error: rootfs.app: {host}/arm:v1 has no linux/amd64 image; the index has: linux/arm64, linux/s390x"
        )),
        "{}",
        r.stderr
    );

    // An unsupported layer media type: refused before any layer is downloaded.
    let bz = Image::new(
        vec![(
            b"BZh91AY&SY not really".to_vec(),
            "application/vnd.oci.image.layer.v1.tar+bzip2",
        )],
        json!({}),
    );
    let d = reg.push("bz", "v1", &bz);
    let ws = Workspace::new();
    ws.write_manifest(&rootfs_and_template(&format!("{host}/bz:v1"), ""));
    refused(
        &ws,
        &format!("{host}/bz:v1@{d}: layer 1 has the unsupported media type `application/vnd.oci.image.layer.v1.tar+bzip2` (fort unpacks tar, tar+gzip and tar+zstd layers)"),
    );

    // A blob whose bytes do not match its digest: nothing cached under that digest.
    let good = one_file_image("etc/x", "the real bytes\n");
    reg.push("corrupt", "v1", &good);
    let layer = &good.layers[0].0;
    let ld = digest(layer);
    let mut bad = layer.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(reg.blob_file(&ld), &bad).unwrap();
    let ws = Workspace::new();
    ws.write_manifest(&rootfs_and_template(&format!("{host}/corrupt:v1"), ""));
    let hex = ld.trim_start_matches("sha256:");
    refused(
        &ws,
        &format!(
            "checksum mismatch for rootfs.app layer 1/1: expected {hex}, got {}",
            common::fort::sha256_hex(&bad)
        ),
    );
    assert!(
        !ws.cache_files().iter().any(|f| f.starts_with(hex)),
        "{:?}",
        ws.cache_files()
    );

    // A layer with a path escape: refused, nothing written outside the image.
    let evil = Image::new(
        vec![(
            tar_layer(&[Entry::Dir("etc"), Entry::Raw(b"../../escaped", b"x\n")]),
            LAYER_TAR,
        )],
        json!({}),
    );
    reg.push("evil", "v1", &evil);
    let ws = Workspace::new();
    ws.write_manifest(&rootfs_and_template(&format!("{host}/evil:v1"), ""));
    let r = run(&ws, &["apply", "--yes"]);
    r.code(1);
    assert!(
        both(&r).contains("entry `../../escaped` leaves the image (`..`)"),
        "{}",
        both(&r)
    );
    let list = run(&ws, &["state", "list"]).ok().stdout.clone();
    assert!(!list.contains("template.t"), "{list}");
    assert!(find(ws.path(), "escaped").is_empty());
    assert!(find(reg.dir.path(), "escaped").is_empty());

    // An image whose /etc and /sbin are absolute symlinks (to host paths): what fort writes
    // there (its image config, an overlay, the agent) is resolved inside the image, as the
    // guest will see it; the host paths stay untouched.
    let ws = Workspace::new();
    let outside = ws.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let linked = Image::new(
        vec![(
            tar_layer(&[
                Entry::Symlink("etc", outside.to_str().unwrap()),
                Entry::Symlink("sbin", outside.to_str().unwrap()),
            ]),
            LAYER_TAR,
        )],
        json!({}),
    );
    reg.push("linked", "v1", &linked);
    ws.write_manifest(&format!(
        "[rootfs.app]\nimage = \"{host}/linked:v1\"\n\n[template.t]\nrootfs = \"app\"\nsize = \"16MiB\"\nguest_agent = false\n[template.t.files]\n\"/sbin/tool\" = \"x\"\n"
    ));
    run(&ws, &["apply", "--yes"]).ok();
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );
    let img = common::registry::template_image(&ws, "t");
    let inside = outside.strip_prefix("/").unwrap().display().to_string();
    let cfg = common::registry::debugfs(&img, &format!("cat /{inside}/fort/image.json"));
    assert!(cfg.contains("\"image\": \""), "{cfg}");
    assert_eq!(
        common::registry::debugfs(&img, &format!("cat /{inside}/tool")),
        "x"
    );
}

fn find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(find(&p, name));
        }
    }
    out
}

#[test]
fn image_rootfs_manifest_errors_name_file_line_and_column() {
    let ws = Workspace::new();
    let d = format!("sha256:{}", "ab".repeat(32));
    let cases = [
        (
            "[rootfs.a]\nurl = \"x.tar\"\nimage = \"debian\"\n",
            "fort.toml:6:9: rootfs.a: set `url` (a tarball) or `image` (an OCI image), not both",
        ),
        (
            "[rootfs.a]\n",
            "fort.toml:4:1: rootfs.a: needs `url` (a root filesystem tarball) or `image` (an OCI image)",
        ),
        (
            "[rootfs.a]\nimage = \"debian\"\nsha256 = \"00\"\n",
            "fort.toml:6:10: rootfs.a: `sha256` applies to a tarball `url`; an image is verified by its digest (pin it with `@sha256:…`)",
        ),
        (
            "[rootfs.a]\nurl = \"x.tar\"\ninsecure = true\n",
            "fort.toml:6:12: rootfs.a: `insecure` applies to `image` only (a registry's images), not to a tarball `url`",
        ),
        (
            "[rootfs.a]\nimage = \"Debian:12\"\n",
            "fort.toml:5:9: rootfs.a: image `Debian:12` repository `library/Debian` is not valid",
        ),
        (
            "[rootfs.a]\nimage = \"debian@sha256:12\"\n",
            "fort.toml:5:9: rootfs.a: image `debian@sha256:12` digest `sha256:12` needs 64 hex digits after sha256:",
        ),
        (
            "[rootfs.a]\nimage = \"oci-layout:dir\"\nauth = \"a.json\"\n",
            "fort.toml:6:8: rootfs.a: `auth` applies to registry images, not to an oci-layout: directory",
        ),
        (
            "[rootfs.a]\nurl = \"x.tar\"\n\n[template.t]\nrootfs = \"a\"\nsize = \"8MiB\"\nrun_image_cmd = true\n",
            "fort.toml:10:17: template.t: run_image_cmd needs an OCI image rootfs (`image = \"…\"`), and rootfs.a is a tarball",
        ),
    ];
    for (body, want) in cases {
        ws.write_manifest(body);
        let r = run(&ws, &["validate"]);
        r.code(1);
        assert!(
            r.stderr.contains(want),
            "{body}\nwant: {want}\n{}",
            r.stderr
        );
    }
    // A pinned image validates, and its template carries the digest without any lookup.
    ws.write_manifest(&rootfs_and_template(
        &format!("registry.invalid/app:v1@{d}"),
        "",
    ));
    let r = run(&ws, &["validate"]);
    r.ok();
    let plan = run(&ws, &["plan", "--json"]);
    plan.ok();
    let p: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(p["images"], serde_json::Value::Null, "nothing was resolved");
}
