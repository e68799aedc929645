//! Test assets: compressed data, tarballs, and a kernel/rootfs/firecracker set on a server.

use std::io::Write;

use super::fort::sha256_hex;
use super::server::{Reply, Server};

pub fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = xz2::write::XzEncoder::new(Vec::new(), 3);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn tgz(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut t = tar::Builder::new(gz);
    for (name, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_cksum();
        t.append_data(&mut h, name, *data).unwrap();
    }
    t.into_inner().unwrap().finish().unwrap()
}

pub const FC_MEMBER: &str = "release-v1.12.0-x86_64/firecracker-v1.12.0-x86_64";

/// A kernel (xz), a rootfs (checksum file) and a firecracker release (tgz member) on `srv`.
pub fn publish_assets(srv: &Server) -> String {
    let kernel = b"not really a kernel, but bytes all the same\n".repeat(5000);
    let kernel_xz = xz(&kernel);
    srv.route("/vmlinux.xz", Reply::ok(kernel_xz.clone()));
    let rootfs = tgz(&[("etc/hostname", b"demo\n", 0o644)]);
    srv.route(
        "/SHA256SUMS",
        Reply::ok(format!("{}  rootfs.tar.gz\n", sha256_hex(&rootfs))),
    );
    srv.route("/rootfs.tar.gz", Reply::ok(rootfs));
    let fc = tgz(&[
        (&format!("{FC_MEMBER}.debug"), b"debug symbols", 0o644),
        (
            "release-v1.12.0-x86_64/jailer-v1.12.0-x86_64",
            b"#!/bin/sh\necho 'Jailer v1.12.0'\n",
            0o755,
        ),
        (FC_MEMBER, b"#!/bin/sh\necho 'Firecracker v1.12.0'\n", 0o755),
    ]);
    let fc_sha = sha256_hex(&fc);
    srv.route("/firecracker.tgz", Reply::ok(fc));
    format!(
        r#"[kernel.k]
url = "{k}"
sha256 = "{ks}"

[rootfs.r]
url = "{r}"
sha256_url = "{sums}"

[firecracker.fc]
url = "{f}"
sha256 = "{fs}"
member = "{FC_MEMBER}"
jailer_member = "release-v1.12.0-x86_64/jailer-v1.12.0-x86_64"
"#,
        k = srv.url("/vmlinux.xz"),
        ks = sha256_hex(&kernel_xz),
        r = srv.url("/rootfs.tar.gz"),
        sums = srv.url("/SHA256SUMS"),
        f = srv.url("/firecracker.tgz"),
        fs = fc_sha,
    )
}
