//! A real registry on loopback for tests: Debian's `docker-registry` (the reference
//! `distribution` registry) with its storage in a temp dir, anonymous, htpasswd or token auth
//! (a tiny token server here signs RS256 JWTs with an openssl key whose self-signed cert is
//! the registry's `rootcertbundle`); images (`oci_image`) are pushed with plain HTTP requests.

pub use super::oci_image::*;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;

pub const USER: &str = "fort-user";
pub const PASSWORD: &str = "s3cret-pass";
const SERVICE: &str = "fort-test-registry";
const ISSUER: &str = "fort-test-issuer";

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Auth {
    Anonymous,
    Htpasswd,
    Token,
}

/// The token server's key and cert, and how many tokens it handed out.
struct Signer {
    key: PathBuf,
    cert_der_b64: String,
}

impl Signer {
    fn new(dir: &Path) -> Signer {
        let key = dir.join("token.key");
        let cert = dir.join("token.crt");
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=fort-test-token",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl (scripts/install-deps installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        assert!(der.status.success());
        Signer {
            key,
            cert_der_b64: base64::engine::general_purpose::STANDARD.encode(der.stdout),
        }
    }

    /// A JWT granting `actions` on `repository`, RS256-signed by openssl, its cert in `x5c`.
    fn token(&self, repository: &str, actions: &[&str]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = json!({"alg": "RS256", "typ": "JWT", "x5c": [self.cert_der_b64]});
        let claims = json!({
            "iss": ISSUER, "sub": USER, "aud": SERVICE,
            "exp": now + 600, "nbf": now - 30, "iat": now,
            "jti": format!("{now}-{}", std::process::id()),
            "access": [{"type": "repository", "name": repository, "actions": actions}],
        });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut sign = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        sign.stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let sig = sign.wait_with_output().unwrap();
        assert!(sig.status.success());
        format!("{input}.{}", b64url(&sig.stdout))
    }
}

/// What the token server saw.
#[derive(Default)]
pub struct TokenLog {
    pub granted: AtomicUsize,
    pub refused: AtomicUsize,
}

fn serve_tokens(listener: TcpListener, signer: Arc<Signer>, log: Arc<TokenLog>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut authorized = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("authorization") {
                    let want = base64::engine::general_purpose::STANDARD
                        .encode(format!("{USER}:{PASSWORD}"));
                    authorized = v.trim() == format!("Basic {want}");
                }
            }
        }
        // scope=repository:NAME:pull
        let scope = target
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("scope="))
            .map(|s| s.replace("%3A", ":").replace("%2F", "/"))
            .unwrap_or_default();
        let repo = scope.split(':').nth(1).unwrap_or("").to_string();
        let reply = if authorized {
            log.granted.fetch_add(1, Ordering::SeqCst);
            let t = signer.token(&repo, &["pull"]);
            let body = json!({"token": t, "access_token": t, "expires_in": 600}).to_string();
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        } else {
            log.refused.fetch_add(1, Ordering::SeqCst);
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_string()
        };
        let _ = conn.write_all(reply.as_bytes());
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running registry, killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub auth: Auth,
    signer: Option<Arc<Signer>>,
    pub tokens: Arc<TokenLog>,
    http: reqwest::blocking::Client,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    pub fn start(auth: Auth) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut signer = None;
        let tokens = Arc::new(TokenLog::default());
        let auth_yaml = match auth {
            Auth::Anonymous => String::new(),
            Auth::Htpasswd => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", USER, PASSWORD])
                    .output()
                    .expect("run htpasswd (apache2-utils)");
                assert!(out.status.success());
                std::fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: fort-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                )
            }
            Auth::Token => {
                let s = Arc::new(Signer::new(dir.path()));
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let tport = listener.local_addr().unwrap().port();
                let (s2, l2) = (s.clone(), tokens.clone());
                std::thread::spawn(move || serve_tokens(listener, s2, l2));
                signer = Some(s);
                format!(
                    "auth:\n  token:\n    realm: http://127.0.0.1:{tport}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    dir.path().join("token.crt").display()
                )
            }
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
            dir.path().join("storage").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry (scripts/install-deps installs it)");
        let reg = Registry {
            child,
            port,
            dir,
            auth,
            signer,
            tokens,
            http: reqwest::blocking::Client::new(),
        };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the registry did not start:\n{}",
                reg.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        reg
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `GET …/blobs/…` requests answered with 200 so far (the access log's lines).
    pub fn blob_gets(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("\"GET /v2/") && l.contains("/blobs/sha256:") && l.contains("\" 200 ")
            })
            .count()
    }

    /// Where the registry stores a blob's bytes (to corrupt it).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// A docker config.json with the test credentials for this registry.
    pub fn auth_file(&self, path: &Path) {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        std::fs::write(
            path,
            json!({"auths": {self.host(): {"auth": auth}}}).to_string(),
        )
        .unwrap();
    }

    fn authorization(&self, repository: &str) -> Option<String> {
        match self.auth {
            Auth::Anonymous => None,
            Auth::Htpasswd => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
            )),
            Auth::Token => Some(format!(
                "Bearer {}",
                self.signer
                    .as_ref()
                    .unwrap()
                    .token(repository, &["pull", "push"])
            )),
        }
    }

    fn send(
        &self,
        repository: &str,
        req: reqwest::blocking::RequestBuilder,
    ) -> reqwest::blocking::Response {
        let req = match self.authorization(repository) {
            Some(a) => req.header("Authorization", a),
            None => req,
        };
        req.send().unwrap()
    }

    pub fn push_blob(&self, repository: &str, data: &[u8]) -> String {
        let d = digest(data);
        let base = format!("http://{}", self.host());
        let r = self.send(
            repository,
            self.http
                .post(format!("{base}/v2/{repository}/blobs/uploads/")),
        );
        assert_eq!(r.status().as_u16(), 202, "{:?}", r.text());
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let loc = if loc.starts_with('/') {
            format!("{base}{loc}")
        } else {
            loc
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self.send(
            repository,
            self.http
                .put(format!("{loc}{sep}digest={d}"))
                .header("Content-Type", "application/octet-stream")
                .body(data.to_vec()),
        );
        assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
        d
    }

    /// PUT a manifest document under `reference` (a tag or its digest); returns its digest.
    pub fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let r = self.send(
            repository,
            self.http
                .put(format!(
                    "http://{}/v2/{repository}/manifests/{reference}",
                    self.host()
                ))
                .header("Content-Type", media_type)
                .body(body.to_vec()),
        );
        assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
        digest(body)
    }

    /// Push an image's blobs and manifest, tagged; returns the manifest's digest.
    pub fn push(&self, repository: &str, tag: &str, image: &Image) -> String {
        for b in image.blobs() {
            self.push_blob(repository, &b);
        }
        self.push_manifest(repository, tag, OCI_MANIFEST, &image.manifest())
    }

    /// Push a multi-platform index of images (`os/arch` each); returns the index digest.
    pub fn push_index(&self, repository: &str, tag: &str, images: &[(&str, &Image)]) -> String {
        let mut entries = Vec::new();
        for (platform, image) in images {
            let m = image.manifest();
            for b in image.blobs() {
                self.push_blob(repository, &b);
            }
            let d = self.push_manifest(repository, &digest(&m), OCI_MANIFEST, &m);
            let (os, arch) = platform.split_once('/').unwrap();
            entries.push(json!({"mediaType": OCI_MANIFEST, "digest": d, "size": m.len(), "platform": {"os": os, "architecture": arch}}));
        }
        let index = serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
        )
        .unwrap();
        self.push_manifest(repository, tag, OCI_INDEX, &index)
    }
}
