//! Commit signatures made by git itself (`gpg.format = ssh`, ssh-keygen signing) checked by
//! fort's verifier, and its verdicts compared with `git verify-commit`'s on the same commits.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::gitrepo::git;
use std::process::Command;

use fort::commit_trust::AllowedSigners;

fn keygen(path: &Path, comment: &str) -> String {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (openssh-client) is needed to sign commits as git does");
    assert!(st.success());
    std::fs::read_to_string(path.with_extension("pub")).unwrap()
}

#[test]
fn signatures_git_makes_are_accepted_or_refused_as_git_verify_commit_does() {
    let tmp = tempfile::tempdir().unwrap();
    let ada = keygen(&tmp.path().join("ada"), "ada");
    let eve = keygen(&tmp.path().join("eve"), "eve");
    let signers = tmp.path().join("allowed_signers");
    std::fs::write(&signers, format!("# the team\nada@example.org {ada}")).unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    for (k, v) in [
        ("user.name", "Ada"),
        ("user.email", "ada@example.org"),
        ("gpg.format", "ssh"),
        ("gpg.ssh.allowedSignersFile", signers.to_str().unwrap()),
    ] {
        git(&repo, &["config", k, v]);
    }
    let commit = |msg: &str, key: Option<&str>| {
        std::fs::write(repo.join("fort.toml"), format!("# {msg}\n")).unwrap();
        git(&repo, &["add", "fort.toml"]);
        match key {
            Some(k) => {
                let key = tmp.path().join(format!("{k}.pub"));
                git(
                    &repo,
                    &[
                        "-c",
                        &format!("user.signingkey={}", key.display()),
                        "commit",
                        "-q",
                        "-S",
                        "-m",
                        msg,
                    ],
                );
            }
            None => {
                git(&repo, &["commit", "-q", "-m", msg]);
            }
        }
        git(&repo, &["rev-parse", "HEAD"]).trim().to_string()
    };
    let good = commit("signed by ada", Some("ada"));
    let by_eve = commit("signed by eve", Some("eve"));
    let unsigned = commit("not signed", None);
    let _ = eve;

    let allowed = AllowedSigners::load(&signers).unwrap();
    // The object byte for byte (the helper trims its output; the signature covers all of it).
    let raw = |id: &str| {
        Command::new("git")
            .current_dir(&repo)
            .args(["cat-file", "commit", id])
            .output()
            .unwrap()
            .stdout
    };
    let git_accepts = |id: &str| {
        Command::new("git")
            .current_dir(&repo)
            .args(["verify-commit", id])
            .output()
            .unwrap()
            .status
            .success()
    };

    let signer = allowed.verify(&good, &raw(&good)).unwrap();
    assert_eq!(signer.principals, "ada@example.org");
    assert!(git_accepts(&good));

    let err = allowed
        .verify(&by_eve, &raw(&by_eve))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "commit {} is signed with key SHA256:",
            &by_eve[..12]
        )) && err.ends_with(&format!("which is not in {}", signers.display())),
        "{err}"
    );
    assert!(!git_accepts(&by_eve));

    assert_eq!(
        allowed
            .verify(&unsigned, &raw(&unsigned))
            .unwrap_err()
            .to_string(),
        format!("commit {} is not signed", &unsigned[..12])
    );
    assert!(!git_accepts(&unsigned));

    // The same signature over other content: a commit object edited after signing.
    let forged = String::from_utf8(raw(&good))
        .unwrap()
        .replace("signed by ada", "signed by Ada");
    let err = allowed
        .verify(&good, forged.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("does not match the commit's content"),
        "{err}"
    );
}
