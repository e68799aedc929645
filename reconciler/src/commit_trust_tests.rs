//! Table tests of commit signature checks, with commits signed here the way git signs them.

#![allow(clippy::unwrap_used)]

use super::*;
use ssh_key::{private::Ed25519Keypair, LineEnding, PrivateKey};

const HEADERS: &str = "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author Ada <ada@example.org> 1764720000 +0000\n\
committer Ada <ada@example.org> 1764720000 +0000\n";
const MESSAGE: &str = "\nvm.a: 512 MiB\n";

fn key(seed: u8) -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
}

fn public(seed: u8) -> String {
    key(seed).public_key().to_openssh().unwrap()
}

/// A commit signed by `seed`'s key for `namespace`, as git writes it: the signature's armor
/// as a `gpgsig` header after `committer`, continuation lines indented by one space.
fn signed(seed: u8, namespace: &str, payload: &str) -> Vec<u8> {
    let sig = SshSig::sign(&key(seed), namespace, HashAlg::Sha512, payload.as_bytes()).unwrap();
    let pem = sig.to_pem(LineEnding::LF).unwrap();
    let mut lines = pem.trim_end().lines();
    let mut header = format!("gpgsig {}\n", lines.next().unwrap());
    for l in lines {
        header.push_str(&format!(" {l}\n"));
    }
    let (head, msg) = payload.split_once("\n\n").unwrap();
    format!("{head}\n{header}\n{msg}").into_bytes()
}

fn payload() -> String {
    format!("{HEADERS}{MESSAGE}")
}

fn signers(text: &str) -> AllowedSigners {
    AllowedSigners::parse(text, "signers").unwrap()
}

const ID: &str = "0123456789abcdef0123456789abcdef01234567";

#[test]
fn a_commit_signed_by_an_allowed_key_is_accepted_with_its_principals() {
    let s = signers(&format!(
        "# team\nada@example.org,ops@example.org {}\n",
        public(1)
    ));
    let got = s.verify(ID, &signed(1, "git", &payload())).unwrap();
    assert_eq!(got.principals, "ada@example.org,ops@example.org");
    assert!(
        got.fingerprint.starts_with("SHA256:"),
        "{}",
        got.fingerprint
    );
}

#[test]
fn refusals_say_why() {
    let s = signers(&format!("ada@example.org {}\n", public(1)));
    let fp2 = key(2).public_key().fingerprint(HashAlg::Sha256).to_string();
    let fp1 = key(1).public_key().fingerprint(HashAlg::Sha256).to_string();
    let tampered = String::from_utf8(signed(1, "git", &payload()))
        .unwrap()
        .replace("512 MiB", "64 GiB");
    let cases: Vec<(Vec<u8>, String)> = vec![
        (
            payload().into_bytes(),
            "commit 0123456789ab is not signed".into(),
        ),
        (
            format!("{HEADERS}gpgsig -----BEGIN PGP SIGNATURE-----\n \n x\n -----END PGP SIGNATURE-----\n{MESSAGE}").into_bytes(),
            "commit 0123456789ab has a GPG signature; only SSH signatures (gpg.format = ssh) are checked".into(),
        ),
        (
            format!("{HEADERS}gpgsig -----BEGIN SSH SIGNATURE-----\n AAAA\n -----END SSH SIGNATURE-----\n{MESSAGE}").into_bytes(),
            "commit 0123456789ab: its signature cannot be read: ".into(),
        ),
        (
            signed(1, "file", &payload()),
            "commit 0123456789ab is signed for namespace \"file\", not \"git\"".into(),
        ),
        (
            signed(2, "git", &payload()),
            format!("commit 0123456789ab is signed with key {fp2}, which is not in signers"),
        ),
        (
            tampered.into_bytes(),
            format!("commit 0123456789ab: the signature by ada@example.org ({fp1}) does not match the commit's content"),
        ),
    ];
    for (raw, want) in cases {
        let got = s.verify(ID, &raw).unwrap_err().to_string();
        assert!(got.starts_with(&want), "got {got:?}, want {want:?}");
    }
}

#[test]
fn line_options_limit_namespace_and_time() {
    let fp = key(1).public_key().fingerprint(HashAlg::Sha256).to_string();
    // The commit is from 2025-12-03 00:00:00 UTC (1764720000).
    let cases = [
        (format!("a namespaces=\"git\" {}", public(1)), None),
        (format!("a namespaces=\"file,git\" {}", public(1)), None),
        (
            format!("a namespaces=\"file\" {}", public(1)),
            Some("does not allow for namespace \"git\" (namespaces=\"file\")"),
        ),
        (format!("a valid-after=\"20251202\" {}", public(1)), None),
        (
            format!("a valid-after=\"20251204\" {}", public(1)),
            Some("does not allow at the commit's time (before its valid-after)"),
        ),
        (
            format!("a valid-before=\"20251203000000Z\" {}", public(1)),
            Some("does not allow at the commit's time (after its valid-before)"),
        ),
        (
            format!(
                "a valid-after=\"20251202\",valid-before=\"20251204\" {}",
                public(1)
            ),
            None,
        ),
    ];
    for (line, want) in cases {
        let got = signers(&line).verify(ID, &signed(1, "git", &payload()));
        match want {
            None => assert!(got.is_ok(), "{line}: {got:?}"),
            Some(w) => {
                let msg = got.unwrap_err().to_string();
                let full = format!(
                    "commit 0123456789ab is signed with key {fp} of a, which signers:1 {w}"
                );
                assert_eq!(msg, full, "{line}");
            }
        }
    }
}

#[test]
fn a_bad_allowed_signers_file_names_the_line() {
    let k = public(1);
    let cases = [
        ("ada\n".to_string(), "signers:1: expected `principals [options] keytype key`, found no key"),
        (format!("# c\n\nada cert-authority {k}\n"), "signers:3: cert-authority lines are not supported: list the signers' own keys"),
        (format!("ada bogus=1 {k}\n"), "signers:1: unknown option `bogus=1` (expected namespaces=, valid-after=, valid-before=)"),
        (format!("ada valid-after=\"2025\" {k}\n"), "signers:1: `2025` is not a time (expected YYYYMMDD[HHMM[SS]][Z])"),
        ("ada ssh-ed25519 AAAAnotbase64!\n".to_string(), "signers:1: the key does not parse: "),
    ];
    for (text, want) in cases {
        let got = AllowedSigners::parse(&text, "signers")
            .unwrap_err()
            .to_string();
        assert!(got.starts_with(want), "got {got:?}, want {want:?}");
    }
}

#[test]
fn times_are_utc_seconds() {
    assert_eq!(parse_time("19700101"), Ok(0));
    assert_eq!(parse_time("20251203"), Ok(1_764_720_000));
    assert_eq!(parse_time("202512030001Z"), Ok(1_764_720_060));
    assert_eq!(parse_time("20240229123456"), Ok(1_709_210_096));
    assert!(parse_time("20241301").is_err());
}
