//! Git repositories for tests, made with the git CLI as a user would: a bare `remote.git`
//! and a work tree `work/` that pushes to it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A bare repository `remote.git` and a work tree `work/` pushing to it.
pub struct Repo {
    pub root: PathBuf,
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("GIT_AUTHOR_NAME", "A U Thor")
        .env("GIT_AUTHOR_EMAIL", "author@example.org")
        .env("GIT_COMMITTER_NAME", "A U Thor")
        .env("GIT_COMMITTER_EMAIL", "author@example.org")
        .output()
        .expect("run git (is it installed?)");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Repo {
    pub fn new(root: &Path) -> Repo {
        std::fs::create_dir_all(root).unwrap();
        git(root, &["init", "-q", "--bare", "-b", "main", "remote.git"]);
        git(root, &["init", "-q", "-b", "main", "work"]);
        git(
            &root.join("work"),
            &["remote", "add", "origin", "../remote.git"],
        );
        Repo {
            root: root.to_path_buf(),
        }
    }

    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    pub fn bare(&self) -> PathBuf {
        self.root.join("remote.git")
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.bare().display())
    }

    /// Write `files` (path, content; `None` removes), commit with `subject`, push; the id.
    pub fn commit(&self, files: &[(&str, Option<&str>)], subject: &str) -> String {
        for (p, content) in files {
            let path = self.work().join(p);
            match content {
                Some(c) => {
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(&path, c).unwrap();
                }
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        git(&self.work(), &["add", "-A"]);
        git(
            &self.work(),
            &["commit", "-q", "--allow-empty", "-m", subject],
        );
        git(&self.work(), &["push", "-q", "-f", "origin", "main"]);
        git(&self.work(), &["rev-parse", "HEAD"])
    }
}
