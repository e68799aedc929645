//! Where bytes come from: HTTP(S) responses or local files, read chunk by chunk; and the
//! publisher's checksum files.

use std::path::PathBuf;

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::FetchError;

/// A body being read.
pub struct Body {
    inner: Inner,
    url: String,
    pub content_length: Option<u64>,
}

enum Inner {
    Http(reqwest::Response),
    File(tokio::fs::File, PathBuf),
}

const CHUNK: usize = 256 * 1024;

/// Start reading `url` (http, https, file:// or an absolute path), with an `Authorization`
/// header for HTTP(S) when given.
pub async fn open(
    client: &reqwest::Client,
    url: &str,
    authorization: Option<&str>,
) -> Result<Body, FetchError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        let mut get = client.get(url);
        if let Some(a) = authorization {
            get = get.header(reqwest::header::AUTHORIZATION, a);
        }
        let resp = get.send().await.map_err(|source| FetchError::Http {
            url: url.to_string(),
            source,
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        return Ok(Body {
            content_length: resp.content_length(),
            inner: Inner::Http(resp),
            url: url.to_string(),
        });
    }
    let path = local_path(url)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| FetchError::io("cannot open", &path, e))?;
    let len = file.metadata().await.ok().map(|m| m.len());
    Ok(Body {
        inner: Inner::File(file, path),
        url: url.to_string(),
        content_length: len,
    })
}

impl Body {
    /// The next chunk, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, FetchError> {
        match &mut self.inner {
            Inner::Http(resp) => resp.chunk().await.map_err(|source| FetchError::Http {
                url: self.url.clone(),
                source,
            }),
            Inner::File(f, path) => {
                let mut buf = vec![0u8; CHUNK];
                let n = f
                    .read(&mut buf)
                    .await
                    .map_err(|e| FetchError::io("cannot read", path, e))?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some(Bytes::from(buf)))
            }
        }
    }
}

/// The path of a `file://` URL or a plain absolute path.
pub fn local_path(url: &str) -> Result<PathBuf, FetchError> {
    if let Some(p) = url.strip_prefix("file://") {
        return Ok(PathBuf::from(p));
    }
    if url.starts_with('/') {
        return Ok(PathBuf::from(url));
    }
    Err(FetchError::Scheme {
        url: url.to_string(),
    })
}

/// Find the sha256 of `url`'s file name in a checksum file: `sha256sum` lines
/// (`HEX  name` or `HEX *name`), or a file holding one bare hash.
pub fn find_checksum(text: &str, sums_url: &str, url: &str) -> Result<String, FetchError> {
    let name = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .rsplit('/')
        .next()
        .unwrap_or(url);
    let is_hash = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let trimmed = text.trim();
    if is_hash(trimmed) {
        return Ok(trimmed.to_ascii_lowercase());
    }
    let mut saw_line = false;
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((hash, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        if !is_hash(hash) {
            continue;
        }
        saw_line = true;
        let file = rest.trim_start().trim_start_matches('*');
        let file = file.strip_prefix("./").unwrap_or(file);
        if file == name || file.rsplit('/').next() == Some(name) {
            return Ok(hash.to_ascii_lowercase());
        }
    }
    if saw_line {
        Err(FetchError::NoChecksumEntry {
            sums_url: sums_url.to_string(),
            name: name.to_string(),
        })
    } else {
        Err(FetchError::BadChecksumFile {
            sums_url: sums_url.to_string(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn checksum_files() {
        let h = "ab".repeat(32);
        let u = "https://x/dl/vmlinux-6.1.xz?sig=1";
        let cases: Vec<(String, Result<String, String>)> = vec![
            (format!("{h}  vmlinux-6.1.xz\n"), Ok(h.clone())),
            (
                format!("{}  other\n{h} *vmlinux-6.1.xz\n", "cd".repeat(32)),
                Ok(h.clone()),
            ),
            (format!("{h}  ./dl/vmlinux-6.1.xz\n"), Ok(h.clone())),
            (format!("{}\n", h.to_uppercase()), Ok(h.clone())),
            (
                format!("{h}  other.xz\n"),
                Err("checksum file S has no entry for `vmlinux-6.1.xz`".to_string()),
            ),
            (
                "<html>not found</html>".to_string(),
                Err("checksum file S is not in sha256sum format".to_string()),
            ),
        ];
        for (text, want) in cases {
            let got = find_checksum(&text, "S", u).map_err(|e| e.to_string());
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn local_paths() {
        assert_eq!(local_path("file:///a/b").unwrap(), PathBuf::from("/a/b"));
        assert_eq!(local_path("/a/b").unwrap(), PathBuf::from("/a/b"));
        assert_eq!(
            local_path("ftp://x/y").unwrap_err().to_string(),
            "ftp://x/y: unsupported URL scheme (expected https://, http://, file:// or a path)"
        );
    }
}
