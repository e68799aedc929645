//! OCI image references as written in `[rootfs.NAME] image = "…"` (pure parsing):
//! `[REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST]` (Docker Hub when no registry is named,
//! `library/` for its one-word official images, tag `latest` when neither tag nor digest is
//! given) and `oci-layout:PATH[:TAG]`.

use std::path::Path;

use super::model::ImageLocation;

/// A parsed reference: where, the tag, the pinned digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub location: ImageLocation,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

pub const DOCKER_HUB: &str = "docker.io";

/// Parse `raw`; relative layout paths are taken from `dir`.
pub fn parse(raw: &str, dir: &Path) -> Result<ImageRef, String> {
    if let Some(rest) = raw.strip_prefix("oci-layout:") {
        return layout(rest, dir);
    }
    if raw.is_empty() {
        return Err("is empty".to_string());
    }
    if raw.contains("://") {
        return Err(
            "is a URL: write the image as REGISTRY/REPOSITORY[:TAG][@sha256:…], without a scheme"
                .to_string(),
        );
    }
    let (name, digest) = match raw.split_once('@') {
        Some((n, d)) => (n, Some(check_digest(d)?)),
        None => (raw, None),
    };
    // A tag is after the last `:` that follows the last `/` (a registry's `:port` is not).
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name[last_slash..].rfind(':') {
        Some(i) => {
            let t = &name[last_slash + i + 1..];
            check_tag(t)?;
            (&name[..last_slash + i], Some(t.to_string()))
        }
        None => (name, None),
    };
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
        DOCKER_HUB.to_string()
    } else {
        registry
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    check_repository(&repository)?;
    let tag = match (tag, &digest) {
        (None, None) => Some("latest".to_string()),
        (t, _) => t,
    };
    Ok(ImageRef {
        location: ImageLocation::Registry {
            registry,
            repository,
        },
        tag,
        digest,
    })
}

fn layout(rest: &str, dir: &Path) -> Result<ImageRef, String> {
    // `PATH:TAG`: a tag is after the last `:` when what follows has no `/`.
    let (path, tag) = match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if path.is_empty() {
        return Err("oci-layout: needs the path of an OCI image layout directory".to_string());
    }
    if let Some(t) = tag {
        check_tag(t)?;
    }
    Ok(ImageRef {
        location: ImageLocation::Layout {
            layout: dir.join(path),
        },
        tag: tag.map(str::to_string),
        digest: None,
    })
}

/// `sha256:` and 64 lowercase hex digits.
pub fn check_digest(d: &str) -> Result<String, String> {
    let Some(hex) = d.strip_prefix("sha256:") else {
        return Err(format!("digest `{d}` is not sha256:…"));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("digest `{d}` needs 64 hex digits after sha256:"));
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

fn check_tag(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag `{t}` is not valid (letters, digits, `_`, `.` and `-`, at most 128, not starting with `.` or `-`)"
        ))
    }
}

fn check_repository(r: &str) -> Result<(), String> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && c.bytes()
                .last()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
    };
    if r.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(format!("repository `{r}` is not valid (lowercase letters, digits and `._-` between them, components separated by `/`)"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reg(raw: &str) -> (String, String, Option<String>, Option<String>) {
        let r = parse(raw, Path::new("/m")).unwrap();
        let ImageLocation::Registry {
            registry,
            repository,
        } = r.location
        else {
            panic!("{raw}: not a registry")
        };
        (registry, repository, r.tag, r.digest)
    }

    #[test]
    fn references() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            reg("debian"),
            (
                "docker.io".into(),
                "library/debian".into(),
                s("latest"),
                None
            )
        );
        assert_eq!(
            reg("debian:bookworm"),
            (
                "docker.io".into(),
                "library/debian".into(),
                s("bookworm"),
                None
            )
        );
        assert_eq!(
            reg("ghcr.io/org/img:v1.2"),
            ("ghcr.io".into(), "org/img".into(), s("v1.2"), None)
        );
        assert_eq!(
            reg("127.0.0.1:5000/busybox"),
            ("127.0.0.1:5000".into(), "busybox".into(), s("latest"), None)
        );
        assert_eq!(
            reg(&format!("localhost:5000/a/b:t@{d}")),
            (
                "localhost:5000".into(),
                "a/b".into(),
                s("t"),
                Some(d.clone())
            )
        );
        assert_eq!(
            reg(&format!(
                "user/app@{}",
                d.to_uppercase().replace("SHA256", "sha256")
            )),
            ("docker.io".into(), "user/app".into(), None, Some(d.clone()))
        );
        let l = parse("oci-layout:img/dir:v2", Path::new("/m")).unwrap();
        assert_eq!(
            l.location,
            ImageLocation::Layout {
                layout: "/m/img/dir".into()
            }
        );
        assert_eq!(l.tag.as_deref(), Some("v2"));
        let l = parse("oci-layout:/abs/dir", Path::new("/m")).unwrap();
        assert_eq!(l.tag, None);
        for (bad, why) in [
            ("", "is empty"),
            ("https://r/x", "is a URL"),
            ("Debian", "repository `library/Debian` is not valid"),
            ("x:", "tag `` is not valid"),
            ("x@sha256:12", "digest `sha256:12` needs 64 hex digits"),
            ("x@md5:12", "digest `md5:12` is not sha256"),
            ("oci-layout:", "oci-layout: needs the path"),
        ] {
            let e = parse(bad, Path::new("/m")).unwrap_err();
            assert!(e.starts_with(why), "{bad}: {e}");
        }
    }
}
