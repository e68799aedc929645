//! Status across hosts: the small JSON report each host writes after a pass (commit it runs,
//! the one it tries, resources, problems) and the one table `fort fleet status` makes of a
//! directory of them (pure apart from reading and writing those files).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The report format's version, `fort_report` in every file.
pub const VERSION: u32 = 1;

/// A commit as a report names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
}

/// One host's report: `DIR/HOST.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub fort_report: u32,
    pub host: String,
    /// Seconds since the epoch when the host wrote it.
    pub updated: u64,
    /// The commit the host has converged to (its last good, applied commit).
    pub converged: Option<Commit>,
    /// A newer commit the host is trying or refused, with why it is not converged to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trying: Option<Commit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Resources recorded on the host.
    pub resources: usize,
    /// `ADDRESS: what is wrong` for every resource not as desired (crashed VM, missing TAP …).
    #[serde(default)]
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot read the reports in {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a fort host report: {msg}", path.display())]
    Bad { path: PathBuf, msg: String },
    #[error("host name {0:?} cannot name a report file (expected letters, digits, `.`, `-`, `_`)")]
    HostName(String),
}

/// Write `report` as `dir/HOST.json`, atomically (temp file, fsync, rename), so a reader
/// never sees half a report.
pub fn write(dir: &Path, report: &Report) -> Result<PathBuf, FleetError> {
    let valid = !report.host.is_empty()
        && !report.host.starts_with('.')
        && report
            .host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !valid {
        return Err(FleetError::HostName(report.host.clone()));
    }
    let path = dir.join(format!("{}.json", report.host));
    let tmp = dir.join(format!(".{}.json.tmp", report.host));
    let werr = |p: &Path| {
        let p = p.to_path_buf();
        move |source| FleetError::Write { path: p, source }
    };
    std::fs::create_dir_all(dir).map_err(werr(dir))?;
    let mut text = serde_json::to_string_pretty(report).map_err(|e| FleetError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    text.push('\n');
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(werr(&tmp))?;
        f.write_all(text.as_bytes()).map_err(werr(&tmp))?;
        f.sync_all().map_err(werr(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(werr(&path))?;
    Ok(path)
}

/// Every `*.json` report in `dir`, sorted by host.
pub fn read_dir(dir: &Path) -> Result<Vec<Report>, FleetError> {
    let derr = |source| FleetError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    let mut reports = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(derr)? {
        let path = entry.map_err(derr)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.ends_with(".json") || name.starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(derr)?;
        reports.push(parse(&path, &text)?);
    }
    reports.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(reports)
}

fn parse(path: &Path, text: &str) -> Result<Report, FleetError> {
    let bad = |msg: String| FleetError::Bad {
        path: path.to_path_buf(),
        msg,
    };
    let report: Report = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    if report.fort_report != VERSION {
        return Err(bad(format!(
            "fort_report {} (this fort reads {VERSION})",
            report.fort_report
        )));
    }
    Ok(report)
}

/// The fleet table: one line per host, `now` in seconds since the epoch; `head` is the
/// branch's newest commit when known, to mark hosts that are behind.
pub fn render(reports: &[Report], now: u64, head: Option<&str>) -> String {
    if reports.is_empty() {
        return "No host reports.\n".to_string();
    }
    let rows: Vec<[String; 6]> = reports
        .iter()
        .map(|r| {
            let commit = r
                .converged
                .as_ref()
                .map_or_else(|| "-".to_string(), |c| short(&c.id).to_string());
            let state = match (&r.converged, &r.trying, &r.error) {
                (_, Some(t), Some(e)) => format!("stuck: {} {e}", short(&t.id)),
                (_, Some(t), None) => format!("applying {}", short(&t.id)),
                (None, None, Some(e)) => format!("failing: {e}"),
                (None, None, None) => "no commit yet".to_string(),
                (Some(c), None, e) => {
                    let behind = head.is_some_and(|h| h != c.id);
                    match (behind, e) {
                        (_, Some(e)) => format!("failing: {e}"),
                        (true, None) => "behind".to_string(),
                        (false, None) => "converged".to_string(),
                    }
                }
            };
            let problems = if r.problems.is_empty() {
                "-".to_string()
            } else {
                r.problems.join("; ")
            };
            [
                r.host.clone(),
                commit,
                state,
                r.resources.to_string(),
                problems,
                age(now.saturating_sub(r.updated)),
            ]
        })
        .collect();
    let header = [
        "HOST",
        "COMMIT",
        "STATE",
        "RESOURCES",
        "PROBLEMS",
        "REPORTED",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn report(host: &str, converged: Option<&str>) -> Report {
        Report {
            fort_report: VERSION,
            host: host.into(),
            updated: 1000,
            converged: converged.map(|id| Commit {
                id: id.into(),
                subject: "s".into(),
            }),
            trying: None,
            error: None,
            resources: 3,
            problems: vec![],
        }
    }

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn the_table_says_each_hosts_commit_and_state() {
        let mut stuck = report("h2", Some(A));
        stuck.trying = Some(Commit {
            id: B.into(),
            subject: String::new(),
        });
        stuck.error = Some("fort.toml:3:1: unknown field `memry`".into());
        stuck.problems = vec!["vm.a: crashed".into()];
        stuck.updated = 1000 - 120;
        let reports = vec![
            report("h1", Some(B)),
            stuck,
            report("h3", Some(A)),
            report("h4", None),
        ];
        let want = "\
HOST  COMMIT        STATE                                                     RESOURCES  PROBLEMS       REPORTED
h1    bbbbbbbbbbbb  converged                                                 3          -              0s ago
h2    aaaaaaaaaaaa  stuck: bbbbbbbbbbbb fort.toml:3:1: unknown field `memry`  3          vm.a: crashed  2m ago
h3    aaaaaaaaaaaa  behind                                                    3          -              0s ago
h4    -             no commit yet                                             3          -              0s ago
";
        assert_eq!(render(&reports, 1000, Some(B)), want);
        assert_eq!(render(&[], 1000, None), "No host reports.\n");
    }

    #[test]
    fn reports_round_trip_through_a_directory_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &report("h1", Some(A))).unwrap();
        assert_eq!(path, dir.path().join("h1.json"));
        write(dir.path(), &report("h0", None)).unwrap();
        let got = read_dir(dir.path()).unwrap();
        assert_eq!(got, vec![report("h0", None), report("h1", Some(A))]);
        assert_eq!(
            write(dir.path(), &report("../x", None)).unwrap_err().to_string(),
            "host name \"../x\" cannot name a report file (expected letters, digits, `.`, `-`, `_`)"
        );
        std::fs::write(dir.path().join("h2.json"), "{\"fort_report\": 9}").unwrap();
        let err = read_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{} is not a fort host report: missing field",
                dir.path().join("h2.json").display()
            )),
            "{err}"
        );
    }
}
