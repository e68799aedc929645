//! `fort diff` as text (the plan's blocks per host), JSON, or Markdown for a pull-request
//! comment (a table of hosts, each host's blocks collapsed under `<details>`).

use std::fmt::Write;

use super::{Diff, HostDiff};
use crate::plan::render::{render_change, Style};
use crate::plan::{PlanOptions, Summary};

/// `Plan: 1 to create, 0 to update, 0 to restart, 0 to replace, 0 to destroy.`, as plans say.
fn summary_line(s: &Summary) -> String {
    format!(
        "Plan: {} to create, {} to update, {} to restart, {} to replace, {} to destroy.",
        s.create, s.update, s.restart, s.replace, s.destroy
    )
}

fn header(d: &Diff) -> String {
    format!(
        "{} → {}, manifest {}",
        d.from.describe(),
        d.to.describe(),
        path_of(d)
    )
}

fn path_of(d: &Diff) -> String {
    if d.path.as_os_str().is_empty() {
        ".".to_string()
    } else {
        d.path.display().to_string()
    }
}

/// One host's changes and notes, as `fort plan` prints them (without its summary).
fn blocks(h: &HostDiff, style: Style) -> String {
    let mut out = String::new();
    let opts = PlanOptions::default();
    for c in &h.changes {
        render_change(&mut out, c, &opts, style);
    }
    for n in &h.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

pub fn text(d: &Diff, style: Style) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", style.bold(&header(d)));
    for h in &d.hosts {
        if let Some(name) = &h.host {
            let _ = writeln!(out, "{}\n", style.bold(&format!("Host {name}:")));
        }
        if h.changes.is_empty() {
            let _ = writeln!(out, "{}", style.green("No changes."));
            for n in &h.notes {
                let _ = writeln!(out, "note: {n}");
            }
        } else {
            out.push_str(&blocks(h, style));
            let _ = writeln!(out, "{}", style.bold(&summary_line(&h.summary)));
        }
        out.push('\n');
    }
    // One blank line between hosts, none at the end.
    out.pop();
    out
}

pub fn json(d: &Diff) -> String {
    serde_json::to_string_pretty(d).unwrap_or_default()
}

pub fn markdown(d: &Diff) -> String {
    let mut out = String::new();
    let code = |s: &str| format!("`{}`", s.replace('`', "'"));
    let end = |e: &super::End| match &e.commit {
        Some(c) => format!("{} ({})", code(&e.rev), code(&c[..c.len().min(7)])),
        None => e.rev.clone(),
    };
    let _ = writeln!(
        out,
        "### fort diff: {} → {}, manifest {}\n",
        end(&d.from),
        end(&d.to),
        code(&path_of(d))
    );
    if d.is_empty() {
        let hosts = match d.hosts.as_slice() {
            [HostDiff { host: None, .. }] => String::new(),
            hs => format!(
                " ({})",
                hs.iter()
                    .filter_map(|h| h.host.as_deref())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let _ = writeln!(out, "No changes{hosts}.");
        return out;
    }
    out.push_str("| host | create | update | restart | replace | destroy | data loss |\n");
    out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let name = |h: &HostDiff| h.host.clone().unwrap_or_else(|| "every host".to_string());
    for h in &d.hosts {
        let s = &h.summary;
        let loss = match h.data_loss() {
            0 => "0".to_string(),
            n => format!("**{n} !**"),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {loss} |",
            code(&name(h)),
            s.create,
            s.update,
            s.restart,
            s.replace,
            s.destroy
        );
    }
    for h in d.hosts.iter().filter(|h| !h.changes.is_empty()) {
        let _ = writeln!(
            out,
            "\n<details><summary><b>{}</b>: {}</summary>\n\n```text\n{}```\n\n</details>",
            name(h),
            summary_line(&h.summary),
            // A fence inside the block would end it early.
            blocks(h, Style { color: false }).replace("```", "'''")
        );
    }
    out
}
