//! A registry v2 / OCI distribution client for one repository: the `/v2/` ping decides the
//! scheme (https; plain http only for loopback registries or with `insecure = true`) and the
//! authentication (anonymous, a Bearer token from the challenge's realm, or Basic), then
//! manifests are fetched into memory and digest-checked. Blobs are not read here: their URL
//! and `Authorization` go to the fetch pipeline.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use super::auth::{self, Challenge, Credentials};
use super::{media, OciError};

/// Manifests larger than this are refused (real ones are a few KiB).
const MANIFEST_LIMIT: usize = 4 << 20;

pub struct Registry {
    http: reqwest::Client,
    /// `scheme://host[:port]` of the API.
    base: String,
    /// As written in the reference (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    pub repository: String,
    creds: Option<Credentials>,
    /// Where credentials were looked for, in words.
    looked: String,
    challenge: Option<Challenge>,
    authorization: Mutex<Option<String>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({}/{})", self.base, self.repository)
    }
}

/// Loopback registries may always speak plain http.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

fn api_host(registry: &str) -> &str {
    if registry == crate::manifest::image_ref::DOCKER_HUB {
        "registry-1.docker.io"
    } else {
        registry
    }
}

fn client(accept_invalid_certs: bool) -> Result<reqwest::Client, OciError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("fort/", env!("CARGO_PKG_VERSION")))
        .danger_accept_invalid_certs(accept_invalid_certs)
        .build()
        .map_err(|source| OciError::Http {
            url: String::new(),
            source,
        })
}

impl Registry {
    /// Ping the registry and authenticate for pulling `repository`.
    pub async fn connect(
        registry: &str,
        repository: &str,
        insecure: bool,
        auth_file: Option<&std::path::Path>,
    ) -> Result<Registry, OciError> {
        let (creds, looked) = auth::lookup(registry, auth_file)?;
        let plain_ok = insecure || is_loopback(registry);
        let host = api_host(registry);
        let https = client(insecure)?;
        let (http, base, ping) = {
            let base = format!("https://{host}");
            match https.get(format!("{base}/v2/")).send().await {
                Ok(r) => (https, base, r),
                Err(e) if plain_ok && !e.is_timeout() => {
                    let base = format!("http://{host}");
                    let plain = client(false)?;
                    let r = plain
                        .get(format!("{base}/v2/"))
                        .send()
                        .await
                        .map_err(|source| OciError::Http {
                            url: format!("{base}/v2/"),
                            source,
                        })?;
                    (plain, base, r)
                }
                Err(source) => {
                    return Err(OciError::Http {
                        url: format!("{base}/v2/"),
                        source,
                    })
                }
            }
        };
        let challenge = match ping.status() {
            StatusCode::UNAUTHORIZED => ping
                .headers()
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(auth::parse_challenge)
                // Bearer when both are offered.
                .min_by_key(|c| matches!(c, Challenge::Basic)),
            s if s.is_success() => None,
            s => {
                return Err(OciError::Status {
                    url: format!("{base}/v2/"),
                    status: s.as_u16(),
                })
            }
        };
        let reg = Registry {
            http,
            base,
            registry: registry.to_string(),
            repository: repository.to_string(),
            creds,
            looked,
            challenge,
            authorization: Mutex::new(None),
        };
        reg.authenticate().await?;
        Ok(reg)
    }

    fn unauthorized(&self, rejected: bool) -> OciError {
        OciError::Unauthorized {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            why: match (&self.creds, rejected) {
                (Some(c), _) => format!(
                    "the credentials for {} from {} were refused",
                    self.registry,
                    c.from.display()
                ),
                (None, _) => format!(
                    "no credentials for {} were found: fort looked in {}",
                    self.registry, self.looked
                ),
            },
        }
    }

    /// Get the `Authorization` the challenge asks for (again, after a 401).
    async fn authenticate(&self) -> Result<(), OciError> {
        let value = match &self.challenge {
            None => None,
            Some(Challenge::Basic) => match &self.creds {
                Some(c) => Some(c.basic()),
                None => return Err(self.unauthorized(false)),
            },
            Some(Challenge::Bearer { realm, service, .. }) => {
                let scope = format!("repository:{}:pull", self.repository);
                let mut q: Vec<(&str, &str)> = vec![("scope", &scope)];
                if let Some(s) = service {
                    q.push(("service", s));
                }
                let mut get = self.http.get(realm).query(&q);
                if let Some(c) = &self.creds {
                    get = get.header(reqwest::header::AUTHORIZATION, c.basic());
                }
                let resp = get.send().await.map_err(|source| OciError::Http {
                    url: realm.clone(),
                    source,
                })?;
                match resp.status() {
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        return Err(self.unauthorized(true))
                    }
                    s if !s.is_success() => {
                        return Err(OciError::Status {
                            url: realm.clone(),
                            status: s.as_u16(),
                        })
                    }
                    _ => {}
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body = resp.bytes().await.map_err(|source| OciError::Http {
                    url: realm.clone(),
                    source,
                })?;
                let t: Token = serde_json::from_slice(&body).map_err(|e| OciError::Format {
                    what: format!("the token from {realm}"),
                    why: format!("is not JSON: {e}"),
                })?;
                let token = t.token.or(t.access_token).ok_or_else(|| OciError::Format {
                    what: format!("the token from {realm}"),
                    why: "has no `token`".to_string(),
                })?;
                Some(format!("Bearer {token}"))
            }
        };
        if let Ok(mut a) = self.authorization.lock() {
            *a = value;
        }
        Ok(())
    }

    /// The `Authorization` header value for requests to this repository, if any.
    pub fn authorization(&self) -> Option<String> {
        self.authorization.lock().ok().and_then(|a| a.clone())
    }

    /// After a 401 on a blob: a fresh token (tokens expire).
    pub async fn reauthenticate(&self) -> Result<(), OciError> {
        self.authenticate().await
    }

    pub fn blob_url(&self, digest: &str) -> String {
        format!("{}/v2/{}/blobs/{digest}", self.base, self.repository)
    }

    /// `registry/repository` as written.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// A request to the repository with the current `Authorization`; a 401 gets a fresh
    /// token (or Basic header) and one more try.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::Response, OciError> {
        let mut retried = false;
        loop {
            let mut req = self
                .http
                .request(method.clone(), url)
                .header(reqwest::header::ACCEPT, media::ACCEPT);
            if let Some(a) = self.authorization() {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            let resp = req.send().await.map_err(|source| OciError::Http {
                url: url.to_string(),
                source,
            })?;
            if resp.status() == StatusCode::UNAUTHORIZED && !retried && self.challenge.is_some() {
                retried = true;
                self.authenticate().await?;
                continue;
            }
            return Ok(resp);
        }
    }

    /// The digest a tag names, from a `HEAD` request's `Docker-Content-Digest` (HEAD requests
    /// do not count against pull rate limits); `None` when the registry does not say.
    pub async fn head_digest(&self, tag: &str) -> Result<Option<String>, OciError> {
        let url = format!("{}/v2/{}/manifests/{tag}", self.base, self.repository);
        let resp = self.send(reqwest::Method::HEAD, &url).await?;
        if !resp.status().is_success() {
            // Errors are reported by the GET, with its details.
            return Ok(None);
        }
        Ok(resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|d| crate::manifest::image_ref::check_digest(d).ok()))
    }

    /// A manifest by tag or digest: its bytes, media type and digest. A digest reference must
    /// match what came back.
    pub async fn manifest(
        &self,
        reference: &str,
    ) -> Result<(Vec<u8>, Option<String>, String), OciError> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.repository);
        let mut resp = self.send(reqwest::Method::GET, &url).await?;
        match resp.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(self.unauthorized(self.creds.is_some()))
            }
            StatusCode::NOT_FOUND => {
                return Err(OciError::NotFound {
                    what: if reference.starts_with("sha256:") {
                        format!("manifest {reference}")
                    } else {
                        format!("tag `{reference}`")
                    },
                    name: self.name(),
                })
            }
            s if !s.is_success() => {
                return Err(OciError::Status {
                    url,
                    status: s.as_u16(),
                })
            }
            _ => {}
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|source| OciError::Http {
            url: url.clone(),
            source,
        })? {
            body.extend_from_slice(&chunk);
            if body.len() > MANIFEST_LIMIT {
                return Err(OciError::Format {
                    what: format!("manifest {reference} of {}", self.name()),
                    why: format!("is larger than {MANIFEST_LIMIT} bytes"),
                });
            }
        }
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if reference.starts_with("sha256:") && digest != reference {
            return Err(OciError::Digest {
                what: format!("manifest of {}", self.name()),
                expected: reference.to_string(),
                got: digest,
            });
        }
        Ok((body, content_type, digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries() {
        for (r, want) in [
            ("127.0.0.1:5000", true),
            ("localhost:5000", true),
            ("localhost", true),
            ("[::1]:5000", true),
            ("127.8.0.1", true),
            ("registry.example:5000", false),
            ("10.0.0.1:5000", false),
            ("docker.io", false),
        ] {
            assert_eq!(is_loopback(r), want, "{r}");
        }
    }
}
