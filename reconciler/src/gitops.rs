//! Following a git branch (pure): what the follower remembers between passes (the commit the
//! host converged to, the one it is trying, a commit it skipped and why, since when fetching
//! fails), the fetch backoff, and how `fort status` shows it. The host side is
//! `host::git`; the loop is `cli::gitops` and `cli::watch`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::CommitInfo;

/// Why a commit is not (yet) what the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// Its manifest does not parse or validate.
    Invalid,
    /// The manifest path does not exist at that commit.
    MissingPath,
    /// The branch was rewritten (not a fast-forward) and `--allow-force-push` was not given.
    ForcePush,
    /// The verification hook refused it (e.g. an untrusted signature).
    Unverified,
    /// Its plan was refused (`--max-destroy`, a protected drive).
    Refused,
    /// Applying it failed (some actions failed); the next pass tries again.
    ApplyFailed,
}

impl ProblemKind {
    pub fn word(self) -> &'static str {
        match self {
            ProblemKind::Invalid => "invalid",
            ProblemKind::MissingPath => "missing path",
            ProblemKind::ForcePush => "force-push refused",
            ProblemKind::Unverified => "unverified",
            ProblemKind::Refused => "refused",
            ProblemKind::ApplyFailed => "apply failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub commit: CommitInfo,
    pub reason: String,
    /// Unix seconds when this commit first had this problem.
    pub since: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchFailure {
    /// Unix seconds of the first failure in this streak.
    pub since: i64,
    pub last: i64,
    pub attempts: u32,
    pub error: String,
}

/// What following a branch remembers (the `gitops` table, key `follow`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Follow {
    /// The remote, without credentials.
    pub url: String,
    pub branch: String,
    pub path: String,
    /// The last tip that passed the fast-forward check: what a force-push is judged against.
    pub seen: Option<String>,
    /// The commit the host converged to (its plan was empty or applied without failures).
    pub converged: Option<CommitInfo>,
    /// Unix seconds when it converged.
    pub converged_at: Option<i64>,
    /// The commit being applied, when it is not the converged one.
    pub trying: Option<CommitInfo>,
    /// The newest commit that could not be applied, and why.
    pub problem: Option<Problem>,
    pub fetch_failure: Option<FetchFailure>,
    /// Unix seconds of the last successful fetch.
    pub last_fetch: Option<i64>,
}

impl Follow {
    /// The remembered state for following `url`/`branch`/`path`: what was recorded when it
    /// is the same branch, else a fresh start (another branch's history says nothing about
    /// force-pushes to this one; the converged commit is kept as what the host runs).
    pub fn resume(recorded: Option<Follow>, url: &str, branch: &str, path: &str) -> Follow {
        match recorded {
            Some(f) if f.url == url && f.branch == branch && f.path == path => f,
            other => Follow {
                url: url.to_string(),
                branch: branch.to_string(),
                path: path.to_string(),
                converged: other.as_ref().and_then(|f| f.converged.clone()),
                converged_at: other.and_then(|f| f.converged_at),
                ..Follow::default()
            },
        }
    }

    pub fn fetch_failed(&mut self, now: i64, error: String) {
        let f = self.fetch_failure.get_or_insert(FetchFailure {
            since: now,
            last: now,
            attempts: 0,
            error: String::new(),
        });
        f.attempts += 1;
        f.last = now;
        f.error = error;
    }

    pub fn fetched(&mut self, now: i64) {
        self.fetch_failure = None;
        self.last_fetch = Some(now);
    }

    /// `commit` cannot be applied. The `since` of the same problem on the same commit stays.
    pub fn problem(&mut self, kind: ProblemKind, commit: &CommitInfo, reason: String, now: i64) {
        let since = match &self.problem {
            Some(p) if p.kind == kind && p.commit.id == commit.id => p.since,
            _ => now,
        };
        self.problem = Some(Problem {
            kind,
            commit: commit.clone(),
            reason,
            since,
        });
        if self.trying.as_ref().is_some_and(|t| t.id == commit.id)
            && kind != ProblemKind::ApplyFailed
        {
            self.trying = None;
        }
    }

    pub fn trying(&mut self, commit: &CommitInfo) {
        if self.converged.as_ref().map(|c| &c.id) != Some(&commit.id) {
            self.trying = Some(commit.clone());
        }
    }

    /// The host runs `commit` now: earlier problems are history.
    pub fn converged(&mut self, commit: &CommitInfo, now: i64) {
        if self.converged.as_ref().map(|c| &c.id) != Some(&commit.id) {
            self.converged_at = Some(now);
        }
        self.converged = Some(commit.clone());
        self.trying = None;
        self.problem = None;
    }
}

/// When to fetch again after `attempts` failures in a row: the interval, doubled per
/// failure, capped at 5 minutes (or the interval, if longer).
pub fn fetch_backoff(interval: Duration, attempts: u32) -> Duration {
    let cap = interval.max(Duration::from_secs(300));
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    interval.saturating_mul(factor).min(cap)
}

/// The 12-digit short form of a commit id.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Unix seconds as `2026-12-03T06:40:00Z`.
pub fn when(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn commit_line(c: &CommitInfo) -> String {
    format!(
        "{} \"{}\" ({}, {})",
        short(&c.id),
        c.subject,
        c.author,
        when(c.date)
    )
}

/// The lines `fort status` prints about the followed branch.
pub fn status_lines(f: &Follow) -> Vec<String> {
    let mut out = vec![format!(
        "Following {} branch {} (path {})",
        f.url, f.branch, f.path
    )];
    match &f.converged {
        Some(c) => out.push(format!(
            "  converged  {}{}",
            commit_line(c),
            f.converged_at
                .map(|t| format!(" since {}", when(t)))
                .unwrap_or_default()
        )),
        None => out.push("  converged  none yet".to_string()),
    }
    if let Some(t) = &f.trying {
        out.push(format!("  trying     {}", commit_line(t)));
    }
    if let Some(p) = &f.problem {
        out.push(format!(
            "  skipped    {} ({} since {}): {}",
            commit_line(&p.commit),
            p.kind.word(),
            when(p.since),
            p.reason
        ));
    }
    match &f.fetch_failure {
        Some(e) => out.push(format!(
            "  fetch      failing since {} ({} attempt(s), last {}): {}",
            when(e.since),
            e.attempts,
            when(e.last),
            e.error
        )),
        None => {
            if let Some(t) = f.last_fetch {
                out.push(format!("  fetch      ok at {}", when(t)));
            }
        }
    }
    out
}

/// What `fort status --json` says about the followed branch.
pub fn status_json(f: &Follow) -> serde_json::Value {
    serde_json::json!({
        "url": f.url,
        "branch": f.branch,
        "path": f.path,
        "converged": f.converged,
        "converged_at": f.converged_at,
        "trying": f.trying,
        "problem": f.problem,
        "fetch_failure": f.fetch_failure,
        "last_fetch": f.last_fetch,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn commit(id: &str, subject: &str) -> CommitInfo {
        CommitInfo {
            id: id.repeat(40 / id.len()),
            author: "A U Thor <a@example.org>".into(),
            date: 1_764_744_000,
            subject: subject.into(),
        }
    }

    #[test]
    fn backoff_doubles_from_the_interval_to_a_cap() {
        let s = Duration::from_secs;
        let got: Vec<u64> = (1..=11).map(|n| fetch_backoff(s(1), n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(fetch_backoff(s(600), 3), s(600));
        assert_eq!(fetch_backoff(s(10), 40), s(300));
    }

    #[test]
    fn a_problem_keeps_its_since_and_convergence_clears_it() {
        let mut f = Follow::resume(None, "file:///r.git", "main", ".");
        let bad = commit("b", "broken");
        f.trying(&bad);
        f.problem(ProblemKind::Invalid, &bad, "fort.toml:1:1: x".into(), 100);
        f.problem(ProblemKind::Invalid, &bad, "fort.toml:1:1: x".into(), 200);
        assert_eq!(f.problem.as_ref().unwrap().since, 100);
        assert_eq!(f.trying, None, "an invalid commit is not being tried");
        let good = commit("c", "fixed");
        f.trying(&good);
        f.converged(&good, 300);
        assert_eq!((f.problem.clone(), f.trying.clone()), (None, None));
        assert_eq!(f.converged_at, Some(300));
        // Another branch starts over but keeps what the host runs.
        let g = Follow::resume(Some(f.clone()), "file:///r.git", "dev", ".");
        assert_eq!(
            (g.seen.clone(), g.converged.clone()),
            (None, f.converged.clone())
        );
        assert_eq!(
            Follow::resume(Some(f.clone()), "file:///r.git", "main", "."),
            f
        );
    }

    #[test]
    fn status_text() {
        let mut f = Follow::resume(None, "http://127.0.0.1:1/r.git", "main", "deploy");
        assert_eq!(
            status_lines(&f),
            [
                "Following http://127.0.0.1:1/r.git branch main (path deploy)",
                "  converged  none yet"
            ]
        );
        f.converged(&commit("a", "first"), 1_764_744_060);
        f.trying(&commit("c", "third"));
        f.problem(
            ProblemKind::ForcePush,
            &commit("d", "rewritten"),
            "not a fast-forward".into(),
            1_764_744_120,
        );
        f.fetch_failed(1_764_744_180, "cannot connect".into());
        f.fetch_failed(1_764_744_240, "cannot connect".into());
        assert_eq!(
            status_lines(&f),
            [
                "Following http://127.0.0.1:1/r.git branch main (path deploy)",
                "  converged  aaaaaaaaaaaa \"first\" (A U Thor <a@example.org>, 2025-12-03T06:40:00Z) since 2025-12-03T06:41:00Z",
                "  trying     cccccccccccc \"third\" (A U Thor <a@example.org>, 2025-12-03T06:40:00Z)",
                "  skipped    dddddddddddd \"rewritten\" (A U Thor <a@example.org>, 2025-12-03T06:40:00Z) (force-push refused since 2025-12-03T06:42:00Z): not a fast-forward",
                "  fetch      failing since 2025-12-03T06:43:00Z (2 attempt(s), last 2025-12-03T06:44:00Z): cannot connect",
            ]
        );
        let j = status_json(&f);
        assert_eq!(j["problem"]["kind"], "force-push");
        assert_eq!(j["fetch_failure"]["since"], 1_764_744_180);
        assert_eq!(j["converged"]["subject"], "first");
    }
}
