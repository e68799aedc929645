//! Human rendering of plans, Terraform style: one block per change, a summary line, colour
//! only when asked (the CLI asks when stdout is a terminal).

use std::fmt::Write;

use serde_json::Value;

use super::{Change, Op, Plan, PlanOptions};
use crate::address::Kind;
use crate::manifest::{is_size_field, units::format_size};

/// ANSI colours, or none.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    fn op(&self, op: Op) -> String {
        let code = match op {
            Op::Create => "32",
            Op::Update | Op::Restart => "33",
            Op::Replace => "35",
            Op::Destroy => "31",
        };
        self.paint(code, op.symbol())
    }

    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }

    pub fn red(&self, s: &str) -> String {
        self.paint("31", s)
    }

    pub fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }

    pub fn yellow(&self, s: &str) -> String {
        self.paint("33", s)
    }
}

/// The whole plan as text.
pub fn render(plan: &Plan, style: Style) -> String {
    let mut out = String::new();
    if plan.is_empty() {
        out.push_str(&style.green("No changes. The host matches the manifest."));
        out.push('\n');
        render_kept(&mut out, plan);
        for n in &plan.notes {
            let _ = writeln!(out, "note: {n}");
        }
        return out;
    }
    let _ = writeln!(out, "fort will perform the following actions:\n");
    for o in plan.orphans.iter().filter(|o| o.removed()) {
        let _ = writeln!(
            out,
            "  {} {}",
            style.red("-"),
            style.bold(&format!("leftover: {}", o.describe()))
        );
        let _ = writeln!(
            out,
            "      reason: {}: it will be {}\n",
            o.reason,
            o.action()
        );
    }
    for c in &plan.changes {
        render_change(&mut out, c, &plan.options, style);
    }
    render_kept(&mut out, plan);
    for n in &plan.notes {
        let _ = writeln!(out, "note: {n}");
    }
    if !plan.notes.is_empty() {
        out.push('\n');
    }
    out.push_str(&style.bold(&summary_line(plan)));
    out.push('\n');
    out
}

/// The plan as a pull-request comment: a heading naming the host, the summary, and the text
/// rendering collapsed under `<details>`.
pub fn markdown(plan: &Plan, host: Option<&str>) -> String {
    let title = match host {
        Some(h) => format!("### fort plan: host `{}`\n\n", h.replace('`', "'")),
        None => "### fort plan\n\n".to_string(),
    };
    if plan.is_empty() {
        return format!("{title}No changes.\n");
    }
    format!(
        "{title}<details><summary>{}</summary>\n\n```text\n{}```\n\n</details>\n",
        summary_line(plan),
        // A fence inside the block would end it early.
        render(plan, Style { color: false }).replace("```", "'''")
    )
}

/// Leftovers fort reports but keeps (drive files: they may hold data).
fn render_kept(out: &mut String, plan: &Plan) {
    for o in plan.orphans.iter().filter(|o| !o.removed()) {
        let _ = writeln!(out, "note: {}: {}", o.describe(), o.reason);
    }
}

/// `Plan: 1 to create, 0 to update, 0 to restart, 0 to replace, 2 to destroy.` (and the
/// leftovers to remove, when there are any).
pub fn summary_line(plan: &Plan) -> String {
    let s = &plan.summary;
    let mut line = format!(
        "Plan: {} to create, {} to update, {} to restart, {} to replace, {} to destroy",
        s.create, s.update, s.restart, s.replace, s.destroy
    );
    if s.leftovers > 0 {
        line.push_str(&format!(
            ", {} leftover{} to remove",
            s.leftovers,
            if s.leftovers == 1 { "" } else { "s" }
        ));
    }
    line.push('.');
    line
}

/// One change's block: `  + vm.a`, its reasons or fields, details and data-loss marks.
pub fn render_change(out: &mut String, c: &Change, opts: &PlanOptions, style: Style) {
    let bang = if c.data_loss {
        format!(" {}", style.red("!"))
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "  {} {}{}",
        style.op(c.op),
        style.bold(&c.address.to_string()),
        bang
    );
    if c.fields.is_empty() || c.op == Op::Destroy {
        for r in &c.reasons {
            let _ = writeln!(out, "      reason: {r}");
        }
    } else {
        for r in c.reasons.iter().filter(|r| !r.ends_with(" changed")) {
            let _ = writeln!(out, "      reason: {r}");
        }
        for f in &c.fields {
            let tag = match f.effect {
                super::Effect::Update => "",
                super::Effect::Restart => "  (needs restart)",
                super::Effect::Replace => "  (forces replacement)",
            };
            let _ = writeln!(
                out,
                "      ~ {}: {} → {}{}",
                f.field,
                value(c.address.kind, &f.field, f.before.as_ref()),
                value(c.address.kind, &f.field, f.after.as_ref()),
                tag
            );
        }
    }
    for d in &c.details {
        let _ = writeln!(out, "      {d}");
    }
    if c.data_loss {
        let _ = writeln!(out, "      {}", style.red("! the data on it will be lost"));
    }
    if let Some(note) = protection_note(c, opts) {
        let _ = writeln!(out, "      {}", style.yellow(&format!("note: {note}")));
    }
    out.push('\n');
}

/// Under a change that loses a protected drive's data: whether executing the plan will be
/// refused, so a reviewer of `fort plan` learns it before `fort apply` does.
fn protection_note(c: &Change, opts: &PlanOptions) -> Option<String> {
    if !c.protected {
        return None;
    }
    let address = &c.address;
    Some(if opts.allow_data_loss {
        format!("{address} is protected (protect = true): allowed by --allow-data-loss")
    } else {
        let command = if opts.destroy { "destroy" } else { "apply" };
        format!("{address} is protected (protect = true): fort {command} refuses this without --allow-data-loss")
    })
}

/// A field's value as printed: sizes (bytes in the spec and the JSON) with binary units, like
/// the manifest writes them.
fn value(kind: Kind, field: &str, v: Option<&Value>) -> String {
    if let Some(bytes) = v.and_then(Value::as_u64) {
        if is_size_field(kind, field) {
            return format_size(bytes);
        }
    }
    match v {
        None | Some(Value::Null) => "(none)".to_string(),
        Some(v) => {
            let s = v.to_string();
            if s.chars().count() > 72 {
                let head: String = s.chars().take(69).collect();
                format!("{head}…")
            } else {
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::plan::{summarize, Effect, FieldDiff, PlanOptions, FORMAT_VERSION};

    fn change(addr: &str, op: Op, fields: &[(&str, Value, Value, Effect)]) -> Change {
        let data_loss = addr.starts_with("drive.") && matches!(op, Op::Destroy | Op::Replace);
        Change {
            address: addr.parse().unwrap(),
            op,
            reasons: fields.iter().map(|f| format!("{} changed", f.0)).collect(),
            data_loss,
            protected: false,
            details: vec![],
            fields: fields
                .iter()
                .map(|(field, before, after, effect)| FieldDiff {
                    field: field.to_string(),
                    before: Some(before.clone()).filter(|v| !v.is_null()),
                    after: Some(after.clone()).filter(|v| !v.is_null()),
                    effect: *effect,
                })
                .collect(),
        }
    }

    fn plan(changes: Vec<Change>, options: PlanOptions) -> Plan {
        Plan {
            format_version: FORMAT_VERSION,
            fort_version: "test".into(),
            manifest: None,
            manifest_digest: String::new(),
            state_dir: "/s".into(),
            state_digest: String::new(),
            options,
            summary: summarize(&changes, &[]),
            changes,
            notes: vec![],
            orphans: vec![],
            images: vec![],
        }
    }

    /// The lines of one change's block (without the header and summary around it).
    fn block(c: Change, options: PlanOptions) -> Vec<String> {
        let text = render(&plan(vec![c], options), Style { color: false });
        let body = text
            .strip_prefix("fort will perform the following actions:\n\n")
            .unwrap();
        body.lines()
            .take_while(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn sizes_are_printed_with_binary_units() {
        let (u, r) = (Effect::Update, Effect::Restart);
        let cases: Vec<(Change, Vec<&str>)> = vec![
            (
                change(
                    "vm.a",
                    Op::Restart,
                    &[("memory", json!(268435456u64), json!(106300440576u64), r)],
                ),
                vec![
                    "  ~restart vm.a",
                    "      ~ memory: 256MiB → 99GiB  (needs restart)",
                ],
            ),
            (
                change(
                    "drive.d",
                    Op::Update,
                    &[("size", json!(1u64 << 30), json!(3u64 << 29), u)],
                ),
                vec!["  ~ drive.d", "      ~ size: 1GiB → 1536MiB"],
            ),
            (
                // A VM's inline root: its size is the drive's.
                change(
                    "drive.a-root",
                    Op::Update,
                    &[("size", json!(2u64 << 30), json!(1u64 << 40), u)],
                ),
                vec!["  ~ drive.a-root", "      ~ size: 2GiB → 1TiB"],
            ),
            (
                change(
                    "template.t",
                    Op::Update,
                    &[("size", json!(1500), json!(1u64 << 20), u)],
                ),
                vec!["  ~ template.t", "      ~ size: 1500B → 1MiB"],
            ),
            (
                // Not sizes: numbers stay numbers, other kinds' `size` too.
                change(
                    "vm.a",
                    Op::Restart,
                    &[
                        ("vcpus", json!(1), json!(2), r),
                        ("memory", Value::Null, json!(1u64 << 30), r),
                    ],
                ),
                vec![
                    "  ~restart vm.a",
                    "      ~ vcpus: 1 → 2  (needs restart)",
                    "      ~ memory: (none) → 1GiB  (needs restart)",
                ],
            ),
            (
                change(
                    "kernel.k",
                    Op::Update,
                    &[("size", json!(1024), json!(2048), u)],
                ),
                vec!["  ~ kernel.k", "      ~ size: 1024 → 2048"],
            ),
        ];
        for (c, want) in cases {
            assert_eq!(block(c, PlanOptions::default()), want);
        }
    }

    #[test]
    fn markdown_collapses_the_plan_under_its_summary() {
        let p = plan(
            vec![change("drive.d", Op::Destroy, &[])],
            PlanOptions::default(),
        );
        assert_eq!(
            markdown(&p, Some("h1")),
            "### fort plan: host `h1`\n\n<details><summary>Plan: 0 to create, 0 to update, 0 to restart, 0 to replace, 1 to destroy.</summary>\n\n```text\nfort will perform the following actions:\n\n  - drive.d !\n      ! the data on it will be lost\n\nPlan: 0 to create, 0 to update, 0 to restart, 0 to replace, 1 to destroy.\n```\n\n</details>\n"
        );
        assert_eq!(
            markdown(&plan(vec![], PlanOptions::default()), None),
            "### fort plan\n\nNo changes.\n"
        );
    }

    #[test]
    fn protected_changes_say_whether_executing_them_is_refused() {
        let protected = |op| Change {
            protected: true,
            reasons: vec!["no longer in the manifest".into()],
            ..change("drive.data", op, &[])
        };
        let opts = |allow_data_loss, destroy| PlanOptions {
            allow_data_loss,
            destroy,
            ..PlanOptions::default()
        };
        let cases = [
            (
                protected(Op::Destroy),
                opts(false, false),
                vec![
                    "  - drive.data !",
                    "      reason: no longer in the manifest",
                    "      ! the data on it will be lost",
                    "      note: drive.data is protected (protect = true): fort apply refuses this without --allow-data-loss",
                ],
            ),
            (
                protected(Op::Replace),
                opts(false, false),
                vec![
                    "  -/+ drive.data !",
                    "      reason: no longer in the manifest",
                    "      ! the data on it will be lost",
                    "      note: drive.data is protected (protect = true): fort apply refuses this without --allow-data-loss",
                ],
            ),
            (
                protected(Op::Destroy),
                opts(false, true),
                vec![
                    "  - drive.data !",
                    "      reason: no longer in the manifest",
                    "      ! the data on it will be lost",
                    "      note: drive.data is protected (protect = true): fort destroy refuses this without --allow-data-loss",
                ],
            ),
            (
                protected(Op::Destroy),
                opts(true, false),
                vec![
                    "  - drive.data !",
                    "      reason: no longer in the manifest",
                    "      ! the data on it will be lost",
                    "      note: drive.data is protected (protect = true): allowed by --allow-data-loss",
                ],
            ),
        ];
        for (c, o, want) in cases {
            assert_eq!(block(c, o), want);
        }
        // Counted like any change.
        let text = render(
            &plan(vec![protected(Op::Destroy)], opts(false, false)),
            Style { color: false },
        );
        assert!(
            text.ends_with(
                "Plan: 0 to create, 0 to update, 0 to restart, 0 to replace, 1 to destroy.\n"
            ),
            "{text}"
        );
    }
}
