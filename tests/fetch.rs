//! The asset fetcher against a real HTTP server on 127.0.0.1 and real files: checksums,
//! checksum files, minisign signatures, decompression, archive members, retries and the cache.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::fort::sha256_hex;
use common::server::{Reply, Server};
use fort::host::fetch::{FetchRequest, Fetcher};
use fort::manifest::{AssetSource, Decompress, Minisign};

fn source(url: String, sha: Option<String>) -> AssetSource {
    AssetSource {
        url,
        sha256: sha,
        sha256_url: None,
        minisign: None,
        decompress: Decompress::None,
    }
}

fn req(src: &AssetSource) -> FetchRequest<'_> {
    FetchRequest {
        source: src,
        member: None,
        executable: false,
        label: "kernel.k",
        authorization: None,
    }
}

/// Files in the cache, excluding the temp dir.
fn entries(cache: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(cache)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "tmp")
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn tmp_files(cache: &Path) -> usize {
    std::fs::read_dir(cache.join("tmp")).map_or(0, |d| d.count())
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn setup() -> (Server, tempfile::TempDir, Fetcher) {
    let dir = tempfile::tempdir().unwrap();
    let f = Fetcher::new(dir.path().join("cache"), false).unwrap();
    (Server::start(), dir, f)
}

#[tokio::test]
async fn download_verify_reuse_and_repair() {
    let (srv, dir, f) = setup();
    let cache = dir.path().join("cache");
    let data = b"kernel".repeat(10_000);
    srv.route("/k", Reply::ok(data.clone()));
    let src = source(srv.url("/k"), Some(sha256_hex(&data).to_uppercase()));

    let got = f.fetch(&req(&src)).await.unwrap();
    assert!(got.downloaded);
    assert_eq!(got.fetched_sha256, sha256_hex(&data));
    assert_eq!(got.content_sha256, sha256_hex(&data));
    assert_eq!(got.size, data.len() as u64);
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    let sha = sha256_hex(&data);
    assert_eq!(entries(&cache), [sha.clone(), format!("{sha}.sha256")]);
    assert_eq!(tmp_files(&cache), 0);

    // Measure, then act: a valid entry is reused without a request.
    let again = f.fetch(&req(&src)).await.unwrap();
    assert!(!again.downloaded);
    assert_eq!(again.path, got.path);
    assert_eq!(srv.hits("/k"), 1);

    // A corrupted entry is noticed and fetched again.
    std::fs::write(&got.path, b"garbage").unwrap();
    let repaired = f.fetch(&req(&src)).await.unwrap();
    assert!(repaired.downloaded);
    assert_eq!(std::fs::read(&repaired.path).unwrap(), data);
    assert_eq!(srv.hits("/k"), 2);
}

#[tokio::test]
async fn checksum_mismatch_installs_nothing() {
    let (srv, dir, f) = setup();
    srv.route("/k", Reply::ok(b"evil".to_vec()));
    let src = source(srv.url("/k"), Some("0".repeat(64)));
    let err = f.fetch(&req(&src)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "checksum mismatch for kernel.k: expected {}, got {} ({})",
            "0".repeat(64),
            sha256_hex(b"evil"),
            srv.url("/k")
        )
    );
    assert!(!err.is_transient());
    assert_eq!(entries(&dir.path().join("cache")), Vec::<String>::new());
    assert_eq!(tmp_files(&dir.path().join("cache")), 0);
}

#[tokio::test]
async fn xz_and_gzip_are_decoded_while_streaming() {
    let (srv, _dir, f) = setup();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 97) as u8).collect();
    for (path, bytes, dec, suffix) in [
        ("/v.xz", xz(&data), Decompress::Xz, ".xz"),
        ("/v.gz", gz(&data), Decompress::Gzip, ".gz"),
    ] {
        srv.route(path, Reply::ok(bytes.clone()));
        let mut src = source(srv.url(path), Some(sha256_hex(&bytes)));
        src.decompress = dec;
        let got = f.fetch(&req(&src)).await.unwrap();
        assert_eq!(got.fetched_sha256, sha256_hex(&bytes));
        assert_eq!(got.content_sha256, sha256_hex(&data));
        assert!(got.path.to_string_lossy().ends_with(suffix));
        assert_eq!(std::fs::read(&got.path).unwrap(), data);
    }
}

#[tokio::test]
async fn corrupt_and_truncated_xz_are_permanent_errors() {
    let (srv, dir, f) = setup();
    let data = b"some kernel bytes ".repeat(50_000);
    let good = xz(&data);
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    for b in &mut corrupt[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let truncated = good[..good.len() / 2].to_vec();
    for (path, bytes) in [("/corrupt.xz", corrupt), ("/trunc.xz", truncated)] {
        srv.route(path, Reply::ok(bytes.clone()));
        let mut src = source(srv.url(path), Some(sha256_hex(&bytes)));
        src.decompress = Decompress::Xz;
        let err = f.fetch(&req(&src)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot decompress or unpack kernel.k ({})", srv.url(path))
        );
        assert!(!err.is_transient());
    }
    assert_eq!(entries(&dir.path().join("cache")), Vec::<String>::new());
}

fn tgz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut t = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        t.append_data(&mut h, name, *data).unwrap();
    }
    t.into_inner().unwrap().finish().unwrap()
}

#[tokio::test]
async fn archive_members_are_picked_exactly() {
    let (srv, _dir, f) = setup();
    let m = "release-v1.12.0-x86_64/firecracker-v1.12.0-x86_64";
    let archive = tgz(&[
        (
            "release-v1.12.0-x86_64/firecracker-v1.12.0-x86_64.debug",
            b"debug",
        ),
        ("release-v1.12.0-x86_64/jailer-v1.12.0-x86_64", b"jailer"),
        (m, b"the binary"),
        ("release-v1.12.0-x86_64/SHA256SUMS", b"sums"),
    ]);
    srv.route("/fc.tgz", Reply::ok(archive.clone()));
    let mut src = source(srv.url("/fc.tgz"), Some(sha256_hex(&archive)));
    src.decompress = Decompress::Gzip;
    let r = FetchRequest {
        source: &src,
        member: Some(m),
        executable: true,
        label: "firecracker.fc",
        authorization: None,
    };
    let got = f.fetch(&r).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), b"the binary");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&got.path).unwrap().permissions().mode() & 0o777,
        0o755
    );

    let missing = FetchRequest {
        member: Some("firecracker"),
        ..r
    };
    let err = f.fetch(&missing).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("firecracker.fc: archive {} has no member `firecracker` (it has: release-v1.12.0-x86_64/firecracker-v1.12.0-x86_64.debug, release-v1.12.0-x86_64/jailer-v1.12.0-x86_64, release-v1.12.0-x86_64/firecracker-v1.12.0-x86_64, release-v1.12.0-x86_64/SHA256SUMS)", srv.url("/fc.tgz"))
    );
}

#[tokio::test]
async fn checksum_files() {
    let (srv, _dir, f) = setup();
    let data = b"rootfs".to_vec();
    srv.route("/r.tar.gz", Reply::ok(data.clone()));
    srv.route(
        "/SUMS",
        Reply::ok(format!(
            "{}  other.tar\n{} *r.tar.gz\n",
            "1".repeat(64),
            sha256_hex(&data)
        )),
    );
    srv.route(
        "/r.tar.gz.sha256",
        Reply::ok(format!("{}\n", sha256_hex(&data))),
    );
    srv.route(
        "/WRONG",
        Reply::ok(format!("{}  other.tar\n", "1".repeat(64))),
    );
    for sums in ["/SUMS", "/r.tar.gz.sha256"] {
        let mut src = source(srv.url("/r.tar.gz"), None);
        src.sha256_url = Some(srv.url(sums));
        let got = f.fetch(&req(&src)).await.unwrap();
        assert_eq!(got.fetched_sha256, sha256_hex(&data));
    }
    let mut src = source(srv.url("/r.tar.gz"), None);
    src.sha256_url = Some(srv.url("/WRONG"));
    assert_eq!(
        f.fetch(&req(&src)).await.unwrap_err().to_string(),
        format!(
            "checksum file {} has no entry for `r.tar.gz`",
            srv.url("/WRONG")
        )
    );
}

fn keypair() -> (minisign::KeyPair, String) {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let b64 = kp.pk.to_base64();
    (kp, b64)
}

fn sign(kp: &minisign::KeyPair, data: &[u8]) -> String {
    minisign::sign(Some(&kp.pk), &kp.sk, std::io::Cursor::new(data), None, None)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn minisign_signatures_fail_closed() {
    let (srv, dir, f) = setup();
    let data = xz(b"signed kernel");
    let (kp, pk) = keypair();
    let (_other, other_pk) = keypair();
    srv.route("/k.xz", Reply::ok(data.clone()));
    srv.route("/good.minisig", Reply::ok(sign(&kp, &data)));
    srv.route("/bad.minisig", Reply::ok(sign(&kp, b"something else")));
    srv.route("/junk.minisig", Reply::ok(b"not a signature".to_vec()));
    let with = |sig: &str, key: &str| {
        let mut s = source(srv.url("/k.xz"), Some(sha256_hex(&data)));
        s.decompress = Decompress::Xz;
        s.minisign = Some(Minisign {
            public_key: key.to_string(),
            signature_url: srv.url(sig),
        });
        s
    };
    let url = srv.url("/k.xz");
    let cases = [
        (with("/bad.minisig", &pk), format!("minisign signature check failed for kernel.k ({url}): The signature verification failed")),
        (with("/good.minisig", &other_pk), format!("minisign signature check failed for kernel.k ({url}): The signature was created with a different key than the one provided")),
        (with("/junk.minisig", &pk), format!("minisign signature {} is unreadable: Invalid encoding in minisign data", srv.url("/junk.minisig"))),
        (with("/missing.minisig", &pk), format!("GET {}: HTTP 404", srv.url("/missing.minisig"))),
    ];
    for (src, want) in cases {
        let err = f.fetch(&req(&src)).await.unwrap_err();
        assert_eq!(fort::resources::error_chain(&err), want);
        assert!(!err.is_transient());
        assert_eq!(entries(&dir.path().join("cache")), Vec::<String>::new());
    }
    let got = f.fetch(&req(&with("/good.minisig", &pk))).await.unwrap();
    assert_eq!(std::fs::read(got.path).unwrap(), b"signed kernel");
}

#[tokio::test]
async fn http_errors_and_truncated_bodies() {
    let (srv, _dir, f) = setup();
    srv.route("/500", Reply::status(500));
    srv.route("/429", Reply::status(429));
    for (path, transient) in [("/404", false), ("/500", true), ("/429", true)] {
        let src = source(srv.url(path), Some("a".repeat(64)));
        let err = f.fetch(&req(&src)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("GET {}: HTTP {}", srv.url(path), &path[1..])
        );
        assert_eq!(err.is_transient(), transient, "{path}");
        assert_eq!(
            srv.hits(path),
            1,
            "the fetcher itself does not retry; the executor does"
        );
    }
    let data = vec![1u8; 1 << 20];
    srv.route("/short", Reply::ok(data.clone()).truncated(300_000));
    let src = source(srv.url("/short"), Some(sha256_hex(&data)));
    let err = f.fetch(&req(&src)).await.unwrap_err();
    assert!(
        err.is_transient(),
        "a connection closed early is worth a retry: {err:?}"
    );
    assert_eq!(err.to_string(), format!("GET {}", srv.url("/short")));
}

#[tokio::test]
async fn local_files_with_and_without_checksums() {
    let (_srv, dir, f) = setup();
    let file = dir.path().join("vmlinux");
    std::fs::write(&file, b"local kernel").unwrap();
    let plain = source(file.display().to_string(), None);
    let got = f.fetch(&req(&plain)).await.unwrap();
    assert_eq!(got.fetched_sha256, sha256_hex(b"local kernel"));
    let url = source(
        format!("file://{}", file.display()),
        Some(sha256_hex(b"local kernel")),
    );
    assert!(!f.fetch(&req(&url)).await.unwrap().downloaded);
    let missing = source(dir.path().join("nope").display().to_string(), None);
    assert_eq!(
        f.fetch(&req(&missing)).await.unwrap_err().to_string(),
        format!("cannot open {}", dir.path().join("nope").display())
    );
}

#[tokio::test]
async fn an_abandoned_download_leaves_no_entry() {
    let (srv, dir, f) = setup();
    let data = vec![9u8; 2 << 20];
    srv.route(
        "/slow",
        Reply::ok(data.clone()).slow(Duration::from_millis(50)),
    );
    let src = source(srv.url("/slow"), Some(sha256_hex(&data)));
    let r = tokio::time::timeout(Duration::from_millis(400), f.fetch(&req(&src))).await;
    assert!(r.is_err(), "the download should still be running");
    assert_eq!(entries(&dir.path().join("cache")), Vec::<String>::new());
    // Leftovers in tmp/ are cleared by the next Fetcher (the next apply).
    std::fs::write(dir.path().join("cache/tmp/.tmpSTALE"), b"partial").unwrap();
    let f2 = Fetcher::new(dir.path().join("cache"), false).unwrap();
    assert_eq!(tmp_files(&dir.path().join("cache")), 0);
    srv.route("/slow", Reply::ok(data.clone()));
    let got = f2.fetch(&req(&src)).await.unwrap();
    assert_eq!(std::fs::read(got.path).unwrap(), data);
}
