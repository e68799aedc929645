//! Registry credentials and challenges: docker `config.json` files (the manifest's `auth`
//! file, then `$FORT_REGISTRY_AUTH`), and `WWW-Authenticate` headers (`Bearer realm=…,
//! service=…, scope=…` or `Basic realm=…`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;

use super::OciError;

/// The environment variable naming a docker `config.json`.
pub const ENV: &str = "FORT_REGISTRY_AUTH";

/// A user name and password for one registry, and the file they came from.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub from: PathBuf,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        write!(
            f,
            "Credentials({} from {})",
            self.username,
            self.from.display()
        )
    }
}

impl Credentials {
    pub fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// The credentials for `registry` (`host[:port]` as written in the image reference), and
/// where fort looked, in words, for errors.
pub fn lookup(
    registry: &str,
    manifest_auth: Option<&Path>,
) -> Result<(Option<Credentials>, String), OciError> {
    let env = std::env::var_os(ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let mut looked = Vec::new();
    for (what, file) in [
        (
            "the manifest's auth file",
            manifest_auth.map(Path::to_path_buf),
        ),
        ("$FORT_REGISTRY_AUTH", env),
    ] {
        let Some(file) = file else {
            looked.push(format!("{what} (not set)"));
            continue;
        };
        match in_file(&file, registry)? {
            Some((username, password)) => {
                let looked = format!("{what} {}", file.display());
                return Ok((
                    Some(Credentials {
                        username,
                        password,
                        from: file,
                    }),
                    looked,
                ));
            }
            None => looked.push(format!(
                "{what} {} (no entry for {registry})",
                file.display()
            )),
        }
    }
    Ok((None, looked.join(" and ")))
}

#[derive(serde::Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(serde::Deserialize)]
struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// `https://index.docker.io/v1/` → `index.docker.io`; `host:5000/v2/` → `host:5000`.
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

fn same_registry(key: &str, registry: &str) -> bool {
    let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    let k = key_host(key);
    k == registry || (hub(k) && hub(registry))
}

fn in_file(file: &Path, registry: &str) -> Result<Option<(String, String)>, OciError> {
    let bad = |why: String| OciError::AuthFile {
        path: file.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(file).map_err(|e| bad(format!("cannot be read: {e}")))?;
    let cfg: ConfigFile = serde_json::from_str(&text)
        .map_err(|e| bad(format!("is not a docker config.json: {e}")))?;
    let Some(entry) = cfg
        .auths
        .iter()
        .find(|(k, _)| same_registry(k, registry))
        .map(|(_, e)| e)
    else {
        return Ok(None);
    };
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Some((u.clone(), p.clone())));
    }
    let Some(auth) = &entry.auth else {
        return Err(bad(format!(
            "has an entry for {registry} without `auth` or `username`/`password` (credential helpers and identity tokens are not supported)"
        )));
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            bad(format!(
                "has an `auth` for {registry} that is not base64 of USER:PASSWORD"
            ))
        })?;
    match decoded.split_once(':') {
        Some((u, p)) => Ok(Some((u.to_string(), p.to_string()))),
        None => Err(bad(format!(
            "has an `auth` for {registry} that is not base64 of USER:PASSWORD"
        ))),
    }
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        "basic" => Some(Challenge::Basic),
        _ => None,
    }
}

/// `k="v", k2=v2` (quoted values may hold commas).
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/debian:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="basic-realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn config_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("u:p:w");
        std::fs::write(
            &f,
            format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{b64}"}},"127.0.0.1:5000":{{"username":"a","password":"b"}}}}}}"#),
        )
        .unwrap();
        assert_eq!(
            in_file(&f, "docker.io").unwrap(),
            Some(("u".into(), "p:w".into()))
        );
        assert_eq!(
            in_file(&f, "127.0.0.1:5000").unwrap(),
            Some(("a".into(), "b".into()))
        );
        assert_eq!(in_file(&f, "ghcr.io").unwrap(), None);
        std::fs::write(&f, "{").unwrap();
        assert!(in_file(&f, "x")
            .unwrap_err()
            .to_string()
            .contains("is not a docker config.json"));
    }
}
