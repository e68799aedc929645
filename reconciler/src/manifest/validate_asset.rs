//! Asset validation: URLs (remote, file://, paths relative to the manifest), checksums,
//! checksum files, minisign keys, and which decompression applies.

use toml::Spanned;

use super::model::*;
use super::raw::*;
use super::units::{check_minisign_key, check_sha256};
use super::validate::{Entry, Resolver};
use crate::address::{Address, Kind};

/// Which decompression to assume when the manifest does not say.
#[derive(Clone, Copy)]
pub(super) enum Infer {
    /// From `.xz` / `.gz` (kernels, initrds, bare binaries).
    Extension,
    /// Never (rootfs tarballs are stored as fetched).
    Never,
    /// A tar archive's compression (`.tgz`, `.tar.gz`, `.tar.xz`).
    Archive,
}

/// The asset keys of any raw asset table (kernel, initrd, rootfs, firecracker share them).
macro_rules! asset_fields {
    ($raw:expr) => {
        $crate::manifest::validate_asset::AssetFields {
            url: &$raw.url,
            sha256: &$raw.sha256,
            sha256_url: &$raw.sha256_url,
            minisign: &$raw.minisign,
            decompress: &$raw.decompress,
        }
    };
}
pub(super) use asset_fields;

pub(super) struct AssetFields<'r> {
    pub(super) url: &'r Spanned<String>,
    pub(super) sha256: &'r Option<Spanned<String>>,
    pub(super) sha256_url: &'r Option<Spanned<String>>,
    pub(super) minisign: &'r Option<Spanned<RawMinisign>>,
    pub(super) decompress: &'r Option<Spanned<RawDecompress>>,
}

impl Resolver<'_, '_, '_> {
    pub(super) fn url(
        &mut self,
        file: usize,
        addr: &str,
        field: &str,
        url: &Spanned<String>,
    ) -> Option<(String, bool)> {
        let raw = url.get_ref();
        if raw.starts_with("https://") || raw.starts_with("http://") {
            return Some((raw.clone(), true));
        }
        if let Some(p) = raw.strip_prefix("file://") {
            if p.starts_with('/') {
                return Some((raw.clone(), false));
            }
            self.cx.err(file, &url.span(), format!("{addr}: {field} `{raw}`: a file:// URL needs an absolute path (file:///…); use a plain relative path instead"));
            return None;
        }
        if raw.contains("://") || raw.is_empty() {
            self.cx.err(file, &url.span(), format!("{addr}: {field} `{raw}`: expected an https://, http:// or file:// URL, or a path"));
            return None;
        }
        let abs = self.cx.dir(file).join(raw);
        Some((format!("file://{}", abs.display()), false))
    }

    pub(super) fn asset(
        &mut self,
        file: usize,
        addr: &str,
        f: &AssetFields<'_>,
        infer: Infer,
    ) -> Option<AssetSource> {
        let (url, remote) = self.url(file, addr, "url", f.url)?;
        let mut ok = true;
        let sha256 = match f.sha256 {
            Some(s) => match check_sha256(s.get_ref()) {
                Ok(h) => Some(h),
                Err(e) => {
                    self.cx.err(file, &s.span(), format!("{addr}: {e}"));
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let sha256_url = match f.sha256_url {
            Some(s) => {
                if f.sha256.is_some() {
                    self.cx.err(
                        file,
                        &s.span(),
                        format!("{addr}: set `sha256` or `sha256_url`, not both"),
                    );
                    ok = false;
                }
                self.url(file, addr, "sha256_url", s).map(|(u, _)| u)
            }
            None => None,
        };
        if remote && f.sha256.is_none() && f.sha256_url.is_none() {
            self.cx.err(file, &f.url.span(), format!("{addr}: a remote url must be verified: add `sha256 = \"…\"` or `sha256_url = \"…\"`"));
            ok = false;
        }
        let minisign = match f.minisign {
            Some(m) => {
                let m = m.get_ref();
                if let Err(e) = check_minisign_key(m.public_key.get_ref()) {
                    self.cx
                        .err(file, &m.public_key.span(), format!("{addr}: {e}"));
                    ok = false;
                }
                self.url(file, addr, "signature_url", &m.signature_url)
                    .map(|(u, _)| Minisign {
                        public_key: m.public_key.get_ref().trim().to_string(),
                        signature_url: u,
                    })
            }
            None => None,
        };
        let decompress = match f.decompress {
            Some(d) => match d.get_ref() {
                RawDecompress::None => Decompress::None,
                RawDecompress::Xz => Decompress::Xz,
                RawDecompress::Gzip => Decompress::Gzip,
            },
            None => infer_decompress(&url, infer),
        };
        ok.then_some(AssetSource {
            url,
            sha256,
            sha256_url,
            minisign,
            decompress,
        })
    }

    /// `[rootfs.NAME]`: exactly one of `url` (a tarball, with the asset keys) or `image` (an
    /// OCI image, with `insecure` and `auth`).
    pub(super) fn rootfs(&mut self, name: &str, e: &Entry<'_, RawRootfs>) {
        let addr = format!("rootfs.{name}");
        let r = e.raw;
        let spec = match (&r.url, &r.image) {
            (Some(_), Some(image)) => {
                self.cx.err(
                    e.file,
                    &image.span(),
                    format!("{addr}: set `url` (a tarball) or `image` (an OCI image), not both"),
                );
                return;
            }
            (None, None) => {
                self.cx.err(
                    e.file,
                    &e.span,
                    format!(
                        "{addr}: needs `url` (a root filesystem tarball) or `image` (an OCI image)"
                    ),
                );
                return;
            }
            (Some(url), None) => {
                let mut ok = true;
                for (key, span) in [
                    ("insecure", r.insecure.as_ref().map(Spanned::span)),
                    ("auth", r.auth.as_ref().map(Spanned::span)),
                ] {
                    if let Some(span) = span {
                        self.cx.err(e.file, &span, format!("{addr}: `{key}` applies to `image` only (a registry's images), not to a tarball `url`"));
                        ok = false;
                    }
                }
                let f = AssetFields {
                    url,
                    sha256: &r.sha256,
                    sha256_url: &r.sha256_url,
                    minisign: &r.minisign,
                    decompress: &r.decompress,
                };
                let source = self.asset(e.file, &addr, &f, Infer::Never);
                match (ok, source) {
                    (true, Some(source)) => RootfsSpec::Tarball { source },
                    _ => return,
                }
            }
            (None, Some(image)) => match self.image(e.file, &addr, r, image) {
                Some(image) => RootfsSpec::Image { image },
                None => return,
            },
        };
        let o = self.cx.origin(e.file, &e.span);
        self.add(Kind::Rootfs, name, o, Spec::Rootfs(spec), vec![]);
    }

    fn image(
        &mut self,
        file: usize,
        addr: &str,
        r: &RawRootfs,
        image: &Spanned<String>,
    ) -> Option<ImageSource> {
        let mut ok = true;
        for (key, span) in [
            ("sha256", r.sha256.as_ref().map(Spanned::span)),
            ("sha256_url", r.sha256_url.as_ref().map(Spanned::span)),
            ("minisign", r.minisign.as_ref().map(Spanned::span)),
            ("decompress", r.decompress.as_ref().map(Spanned::span)),
        ] {
            if let Some(span) = span {
                self.cx.err(file, &span, format!("{addr}: `{key}` applies to a tarball `url`; an image is verified by its digest (pin it with `@sha256:…`)"));
                ok = false;
            }
        }
        let parsed = match super::image_ref::parse(image.get_ref(), self.cx.dir(file)) {
            Ok(p) => Some(p),
            Err(why) => {
                self.cx.err(
                    file,
                    &image.span(),
                    format!("{addr}: image `{}` {why}", image.get_ref()),
                );
                None
            }
        };
        let layout = parsed
            .as_ref()
            .is_some_and(|p| matches!(p.location, ImageLocation::Layout { .. }));
        if layout {
            for (key, span) in [
                ("insecure", r.insecure.as_ref().map(Spanned::span)),
                ("auth", r.auth.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = span {
                    self.cx.err(file, &span, format!("{addr}: `{key}` applies to registry images, not to an oci-layout: directory"));
                    ok = false;
                }
            }
        }
        let auth = r.auth.as_ref().map(|a| self.cx.dir(file).join(a.get_ref()));
        let parsed = parsed?;
        ok.then(|| ImageSource {
            location: parsed.location,
            tag: parsed.tag,
            digest: parsed.digest,
            insecure: r.insecure.as_ref().is_some_and(|i| *i.get_ref()),
            auth,
        })
    }

    /// The image of `[rootfs.NAME]`, when it is one (rootfs resources are resolved before
    /// templates).
    pub(super) fn rootfs_image(&self, name: &str) -> Option<&ImageSource> {
        match &self.resource(&Address::new(Kind::Rootfs, name))?.spec {
            Spec::Rootfs(r) => r.image(),
            _ => None,
        }
    }

    pub(super) fn kernel(&mut self, name: &str, e: &Entry<'_, RawKernel>) {
        let addr = format!("kernel.{name}");
        let f = asset_fields!(e.raw);
        let source = self.asset(e.file, &addr, &f, Infer::Extension);
        let initrd = match &e.raw.initrd {
            None => Ok(None),
            Some(i) => {
                let i = i.get_ref();
                let f = asset_fields!(i);
                self.asset(e.file, &format!("{addr}: initrd"), &f, Infer::Extension)
                    .map(Some)
                    .ok_or(())
            }
        };
        let (Some(source), Ok(initrd)) = (source, initrd) else {
            return;
        };
        let spec = Spec::Kernel(KernelSpec {
            source,
            cmdline: e
                .raw
                .cmdline
                .clone()
                .unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            initrd,
        });
        let o = self.cx.origin(e.file, &e.span);
        self.add(Kind::Kernel, name, o, spec, vec![]);
    }
}

fn infer_decompress(url: &str, infer: Infer) -> Decompress {
    let u = url.split(['?', '#']).next().unwrap_or(url);
    match infer {
        Infer::Never => Decompress::None,
        Infer::Extension if u.ends_with(".xz") => Decompress::Xz,
        Infer::Extension if u.ends_with(".gz") => Decompress::Gzip,
        Infer::Extension => Decompress::None,
        Infer::Archive if u.ends_with(".tgz") || u.ends_with(".tar.gz") => Decompress::Gzip,
        Infer::Archive if u.ends_with(".txz") || u.ends_with(".tar.xz") => Decompress::Xz,
        Infer::Archive => Decompress::None,
    }
}
