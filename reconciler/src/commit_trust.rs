//! Which commits a host may apply: SSH signatures of git commits (`gpg.format = ssh`) checked
//! against an OpenSSH `allowed_signers` file, with `git verify-commit` semantics (pure: bytes in,
//! a verdict out).
//!
//! git signs the commit object without its `gpgsig` header with `ssh-keygen -Y sign -n git`
//! and verifies by looking the signature's key up in `gpg.ssh.allowedSignersFile`
//! (`ssh-keygen -Y find-principals`), honouring the line's `namespaces` and its
//! `valid-after`/`valid-before` at the commit's committer time. This module does the same
//! without running ssh-keygen.

use std::path::Path;

use ssh_key::{HashAlg, PublicKey, SshSig};

/// A parsed `allowed_signers` file.
#[derive(Debug, Clone)]
pub struct AllowedSigners {
    file: String,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    principals: String,
    namespaces: Option<Vec<String>>,
    valid_after: Option<i64>,
    valid_before: Option<i64>,
    key: PublicKey,
}

/// Who signed an accepted commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The principals of the `allowed_signers` line that holds the key (as written there).
    pub principals: String,
    /// The key's `SHA256:…` fingerprint.
    pub fingerprint: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    #[error("{file}:{line}: {msg}")]
    File {
        file: String,
        line: usize,
        msg: String,
    },
    #[error("cannot read {file}: {msg}")]
    Read { file: String, msg: String },
    #[error("commit {commit} is not signed")]
    Unsigned { commit: String },
    #[error(
        "commit {commit} has a GPG signature; only SSH signatures (gpg.format = ssh) are checked"
    )]
    NotSsh { commit: String },
    #[error("commit {commit}: its signature cannot be read: {msg}")]
    Malformed { commit: String, msg: String },
    #[error("commit {commit} is signed for namespace \"{namespace}\", not \"git\"")]
    Namespace { commit: String, namespace: String },
    #[error("commit {commit} is signed with key {fingerprint}, which is not in {file}")]
    UnknownKey {
        commit: String,
        fingerprint: String,
        file: String,
    },
    /// The key is listed, but its line does not allow this signature (namespace, time).
    #[error("{0}")]
    NotAllowed(String),
    #[error("commit {commit}: the signature by {principals} ({fingerprint}) does not match the commit's content")]
    BadSignature {
        commit: String,
        principals: String,
        fingerprint: String,
    },
}

impl AllowedSigners {
    /// Read and parse `path`.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TrustError::Read {
            file: file.clone(),
            msg: e.to_string(),
        })?;
        Self::parse(&text, &file)
    }

    /// Parse the text of an `allowed_signers` file named `file` (for messages):
    /// `principals [options] keytype base64 [comment]` per line, `#` comments.
    pub fn parse(text: &str, file: &str) -> Result<Self, TrustError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let err = |msg: String| TrustError::File {
                file: file.to_string(),
                line,
                msg,
            };
            let fields = split_fields(trimmed);
            let (principals, rest) = fields
                .split_first()
                .ok_or_else(|| err("expected `principals [options] keytype key`".into()))?;
            let (options, key_fields) = match rest.first() {
                Some(f) if !is_key_type(f) => (Some(f.as_str()), &rest[1..]),
                _ => (None, rest),
            };
            if key_fields.len() < 2 {
                return Err(err(
                    "expected `principals [options] keytype key`, found no key".into(),
                ));
            }
            let key = PublicKey::from_openssh(&format!("{} {}", key_fields[0], key_fields[1]))
                .map_err(|e| err(format!("the key does not parse: {e}")))?;
            let mut entry = Entry {
                line,
                principals: principals.clone(),
                namespaces: None,
                valid_after: None,
                valid_before: None,
                key,
            };
            for opt in options.map(split_options).unwrap_or_default() {
                let (name, value) = match opt.split_once('=') {
                    Some((n, v)) => (
                        n.to_ascii_lowercase(),
                        Some(v.trim_matches('"').to_string()),
                    ),
                    None => (opt.to_ascii_lowercase(), None),
                };
                match (name.as_str(), value) {
                    ("cert-authority", _) => {
                        return Err(err("cert-authority lines are not supported: list the signers' own keys".into()))
                    }
                    ("namespaces", Some(v)) => {
                        entry.namespaces = Some(v.split(',').map(|s| s.trim().to_string()).collect())
                    }
                    ("valid-after", Some(v)) => entry.valid_after = Some(parse_time(&v).map_err(err)?),
                    ("valid-before", Some(v)) => entry.valid_before = Some(parse_time(&v).map_err(err)?),
                    _ => {
                        return Err(err(format!(
                            "unknown option `{opt}` (expected namespaces=, valid-after=, valid-before=)"
                        )))
                    }
                }
            }
            entries.push(entry);
        }
        Ok(AllowedSigners {
            file: file.to_string(),
            entries,
        })
    }

    /// Check `raw`, the bytes of the commit object `commit` (as stored, without git's
    /// `commit <len>\0` prefix).
    pub fn verify(&self, commit: &str, raw: &[u8]) -> Result<Signer, TrustError> {
        let short = &commit[..commit.len().min(12)];
        let (payload, armor) = split_signature(raw).ok_or_else(|| TrustError::Unsigned {
            commit: short.to_string(),
        })?;
        if !armor.starts_with("-----BEGIN SSH SIGNATURE-----") {
            return Err(TrustError::NotSsh {
                commit: short.to_string(),
            });
        }
        let sig = SshSig::from_pem(armor.as_bytes()).map_err(|e| TrustError::Malformed {
            commit: short.to_string(),
            msg: e.to_string(),
        })?;
        if sig.namespace() != "git" {
            return Err(TrustError::Namespace {
                commit: short.to_string(),
                namespace: sig.namespace().to_string(),
            });
        }
        let fingerprint = sig.public_key().fingerprint(HashAlg::Sha256).to_string();
        let candidates: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.key.key_data() == sig.public_key())
            .collect();
        let Some(first) = candidates.first() else {
            return Err(TrustError::UnknownKey {
                commit: short.to_string(),
                fingerprint,
                file: self.file.clone(),
            });
        };
        let time = committer_time(raw);
        let allowed = candidates
            .iter()
            .find(|e| e.refusal(time).is_none())
            .ok_or_else(|| {
                TrustError::NotAllowed(format!(
                    "commit {short} is signed with key {fingerprint} of {}, which {}:{} does not allow {}",
                    first.principals,
                    self.file,
                    first.line,
                    first.refusal(time).unwrap_or_default()
                ))
            })?;
        allowed
            .key
            .verify("git", &payload, &sig)
            .map_err(|_| TrustError::BadSignature {
                commit: short.to_string(),
                principals: allowed.principals.clone(),
                fingerprint: fingerprint.clone(),
            })?;
        Ok(Signer {
            principals: allowed.principals.clone(),
            fingerprint,
        })
    }
}

impl Entry {
    /// Why this line does not allow a git signature made at `time`, if it does not.
    fn refusal(&self, time: Option<i64>) -> Option<String> {
        if let Some(ns) = &self.namespaces {
            if !ns.iter().any(|n| n == "git" || n == "*") {
                return Some(format!(
                    "for namespace \"git\" (namespaces=\"{}\")",
                    ns.join(",")
                ));
            }
        }
        let t = time?;
        if self.valid_after.is_some_and(|a| t < a) {
            return Some("at the commit's time (before its valid-after)".into());
        }
        if self.valid_before.is_some_and(|b| t >= b) {
            return Some("at the commit's time (after its valid-before)".into());
        }
        None
    }
}

fn is_key_type(field: &str) -> bool {
    field.starts_with("ssh-") || field.starts_with("ecdsa-") || field.starts_with("sk-")
}

/// Whitespace-separated fields, a double-quoted stretch kept whole (options may quote).
fn split_fields(line: &str) -> Vec<String> {
    split_outside_quotes(line, char::is_whitespace)
}

/// Comma-separated options, commas inside quotes kept.
fn split_options(options: &str) -> Vec<String> {
    split_outside_quotes(options, |c| c == ',')
}

/// `text` split at the characters `sep` accepts outside double quotes (the quotes stay in
/// the pieces); empty pieces dropped.
fn split_outside_quotes(text: &str, sep: impl Fn(char) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in text.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && sep(c) {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `YYYYMMDD[HHMM[SS]][Z]` as seconds since the epoch, read as UTC (ssh-keygen reads it as
/// local time without the `Z`; fort hosts keep UTC, and docs/gitops.md says so).
fn parse_time(v: &str) -> Result<i64, String> {
    let digits = v.strip_suffix('Z').unwrap_or(v);
    let bad = || format!("`{v}` is not a time (expected YYYYMMDD[HHMM[SS]][Z])");
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let n = |r: std::ops::Range<usize>| digits.get(r).and_then(|s| s.parse::<i64>().ok());
    let (y, m, d) = (n(0..4), n(4..6), n(6..8));
    let (Some(y), Some(m), Some(d)) = (y, m, d) else {
        return Err(bad());
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let (hh, mm, ss) = (
        n(8..10).unwrap_or(0),
        n(10..12).unwrap_or(0),
        n(12..14).unwrap_or(0),
    );
    Ok(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The commit without its `gpgsig` header (what was signed), and the signature's armor.
fn split_signature(raw: &[u8]) -> Option<(Vec<u8>, String)> {
    let header_end = find(raw, b"\n\n").map_or(raw.len(), |i| i + 1);
    let mut payload = Vec::with_capacity(raw.len());
    let mut armor: Option<String> = None;
    let mut in_sig = false;
    let mut pos = 0;
    while pos < header_end {
        let end = raw[pos..header_end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header_end, |i| pos + i + 1);
        let line = &raw[pos..end];
        if in_sig && line.first() == Some(&b' ') {
            if let Some(a) = armor.as_mut() {
                a.push_str(&String::from_utf8_lossy(&line[1..]));
            }
        } else if let Some(rest) = line.strip_prefix(b"gpgsig ") {
            in_sig = true;
            armor = Some(String::from_utf8_lossy(rest).into_owned());
        } else {
            in_sig = false;
            payload.extend_from_slice(line);
        }
        pos = end;
    }
    payload.extend_from_slice(&raw[header_end..]);
    armor.map(|a| (payload, a))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The committer's timestamp (`committer NAME <EMAIL> SECONDS ZONE`).
fn committer_time(raw: &[u8]) -> Option<i64> {
    let text = String::from_utf8_lossy(raw);
    let line = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find(|l| l.starts_with("committer "))?;
    let mut it = line.rsplit(' ');
    it.next()?;
    it.next()?.parse().ok()
}

#[cfg(test)]
#[path = "commit_trust_tests.rs"]
mod tests;
