//! The bare mirror in `state_dir/git/mirror.git` and fetching one branch into it over
//! file://, a local path or http(s) (gix's blocking transports). Fetches are incremental:
//! the mirror keeps every object it received, so only new commits travel.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::remote::Direction;

use super::{describe, GitError};
use crate::state::CommitInfo;

/// fort's clone of the followed repository. Only fort writes it, under `state_dir/git/lock`.
pub struct Mirror {
    repo: gix::Repository,
    dir: PathBuf,
}

/// `url` without a password or token in it: what logs, errors and `fort status` show.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let user = userinfo.split(':').next().unwrap_or("");
    let sep = if rest.contains('/') { "/" } else { "" };
    if userinfo.contains(':') {
        format!("{scheme}://{user}:***@{host}{sep}{path}")
    } else {
        format!("{scheme}://{user}@{host}{sep}{path}")
    }
}

/// A killed fort can leave `*.lock` files behind; under fort's own lock none is live.
fn remove_stale_locks(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "objects") {
                remove_stale_locks(&p);
            }
        } else if p.extension().is_some_and(|x| x == "lock") {
            tracing::info!(
                "removing stale lock {} (left by a killed fort)",
                p.display()
            );
            let _ = std::fs::remove_file(&p);
        }
    }
}

impl Mirror {
    /// Open the mirror under `git_dir`, creating an empty bare repository the first time.
    pub fn open(git_dir: &Path) -> Result<Mirror, GitError> {
        let dir = git_dir.join("mirror.git");
        let err = |message: String| GitError::Open {
            path: dir.clone(),
            message,
        };
        let repo = if dir.join("HEAD").is_file() {
            remove_stale_locks(&dir);
            gix::open(&dir).map_err(|e| err(describe(&e)))?
        } else {
            // A half-made mirror (killed during init) is started over: it holds nothing yet.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(git_dir).map_err(|e| err(e.to_string()))?;
            gix::init_bare(&dir).map_err(|e| err(describe(&e)))?
        };
        Ok(Mirror { repo, dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn repo(&self) -> &gix::Repository {
        &self.repo
    }

    /// Fetch `branch` from `url` into `refs/remotes/origin/BRANCH`; returns the commit it
    /// points to. History rewrites are fetched too (`+`): whether to follow them is the
    /// caller's decision, made against the last commit it accepted.
    pub fn fetch(
        &self,
        url: &str,
        branch: &str,
        interrupt: &AtomicBool,
    ) -> Result<String, GitError> {
        let shown = redact(url);
        let err = |e: gix::Error| GitError::Fetch {
            url: shown.clone(),
            message: describe(&e),
        };
        let spec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        let remote = self
            .repo
            .remote_at(url)
            .map_err(err)?
            .with_refspecs([spec.as_str()], Direction::Fetch)
            .map_err(err)?;
        let connection = remote.connect(Direction::Fetch).map_err(err)?;
        let prepare = connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(err)?;
        let want = format!("refs/heads/{branch}");
        let tip = prepare
            .ref_map()
            .mappings
            .iter()
            .find(|m| m.remote.as_name().is_some_and(|n| n == want.as_str()))
            .and_then(|m| m.remote.as_id().map(|id| id.to_owned()));
        let Some(tip) = tip else {
            drop(prepare);
            return Err(GitError::NoBranch {
                url: shown,
                branch: branch.to_string(),
                available: self.branches(url).unwrap_or_default(),
            });
        };
        prepare
            .receive(gix::progress::Discard, interrupt)
            .map_err(err)?;
        Ok(tip.to_string())
    }

    /// The branches `url` has (for the error naming a missing one): the fetch itself asks
    /// the server only for the branch it wants.
    fn branches(&self, url: &str) -> Result<Vec<String>, gix::Error> {
        let remote = self
            .repo
            .remote_at(url)?
            .with_refspecs(["+refs/heads/*:refs/remotes/origin/*"], Direction::Fetch)?;
        let connection = remote.connect(Direction::Fetch)?;
        let prepare = connection.prepare_fetch(
            gix::progress::Discard,
            gix::remote::ref_map::Options {
                prefix_from_spec_as_filter_on_remote: false,
                ..Default::default()
            },
        )?;
        let mut out: Vec<String> = prepare
            .ref_map()
            .remote_refs
            .iter()
            .filter_map(|r| {
                let name = r.unpack().0.to_string();
                name.strip_prefix("refs/heads/").map(String::from)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn commit(&self, id: &str) -> Result<gix::Commit<'_>, GitError> {
        let oid = gix::ObjectId::from_hex(id.as_bytes()).map_err(|e| GitError::Object {
            id: id.to_string(),
            message: e.to_string(),
        })?;
        self.repo.find_commit(oid).map_err(|e| GitError::Object {
            id: id.to_string(),
            message: describe(&e),
        })
    }

    /// Id, author, date and subject of a fetched commit.
    pub fn commit_info(&self, id: &str) -> Result<CommitInfo, GitError> {
        let c = self.commit(id)?;
        let oerr = |e: gix::Error| GitError::Object {
            id: id.to_string(),
            message: describe(&e),
        };
        let author = c.author().map_err(oerr)?;
        let date = c.time().map_err(oerr)?.seconds;
        let subject = c.message().map_err(oerr)?.summary().to_string();
        Ok(CommitInfo {
            id: id.to_string(),
            author: format!("{} <{}>", author.name, author.email),
            date,
            subject,
        })
    }

    /// Is `old` reachable from `new` (a fast-forward)? An `old` this mirror does not hold
    /// (the mirror was removed) is `None`: unknown.
    pub fn is_ancestor(&self, old: &str, new: &str) -> Result<Option<bool>, GitError> {
        if old == new {
            return Ok(Some(true));
        }
        let Ok(old_id) = self.commit(old).map(|c| c.id) else {
            return Ok(None);
        };
        let tip = self.commit(new)?.id;
        let walk = self
            .repo
            .rev_walk([tip])
            .all()
            .map_err(|e| GitError::Object {
                id: new.to_string(),
                message: describe(&e),
            })?;
        for info in walk {
            let info = info.map_err(|e| GitError::Object {
                id: new.to_string(),
                message: describe(&e),
            })?;
            if info.id == old_id {
                return Ok(Some(true));
            }
        }
        Ok(Some(false))
    }

    /// The tree of commit `id` (for checkout).
    pub(super) fn tree(&self, id: &str) -> Result<gix::Tree<'_>, GitError> {
        self.commit(id)?.tree().map_err(|e| GitError::Object {
            id: id.to_string(),
            message: describe(&e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_never_shown() {
        let cases = [
            ("https://host/r.git", "https://host/r.git"),
            (
                "https://tok:secret@host/r.git",
                "https://tok:***@host/r.git",
            ),
            ("https://user@host/r.git", "https://user@host/r.git"),
            ("http://u:p@127.0.0.1:8080", "http://u:***@127.0.0.1:8080"),
            ("file:///srv/r.git", "file:///srv/r.git"),
            ("/srv/r.git", "/srv/r.git"),
        ];
        for (url, want) in cases {
            assert_eq!(redact(url), want, "{url}");
        }
    }
}
