//! Planner table tests: desired × recorded × observed → exactly these changes.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::manifest;

const BASE: &str = "[fort]\nversion = 1\n\
[kernel.k]\nurl = \"/boot/vmlinux\"\n\
[rootfs.r]\nurl = \"/srv/r.tar\"\n\
[template.t]\nrootfs = \"r\"\nsize = \"1GiB\"\n\
[network.lan]\ncidr = \"10.77.0.0/24\"\n\
[drive.data]\nsize = \"1GiB\"\nprotect = true\n\
[drive.tmp]\nsize = \"1GiB\"\n\
[vm.a]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\ndrives = [\"data\"]\n";

fn desired(text: &str) -> BTreeMap<Address, Resource> {
    manifest::load_files(
        &[(PathBuf::from("f.toml"), text.to_string())],
        Path::new("f.toml"),
    )
    .unwrap()
    .resources
}

fn recorded(d: &BTreeMap<Address, Resource>) -> BTreeMap<Address, Record> {
    d.iter()
        .map(|(a, r)| (a.clone(), Record::applied(r, serde_json::json!({}), 1, 1)))
        .collect()
}

fn a(s: &str) -> Address {
    s.parse().unwrap()
}

/// One line per change: `SYMBOL ADDRESS[ !][ protected] (reason; reason)`, and last, when
/// executing the plan would be refused, `refused: WHY`.
fn run(
    text: &str,
    rec: &BTreeMap<Address, Record>,
    obs: &[(&str, Observation)],
    opts: PlanOptions,
) -> Result<Vec<String>, String> {
    let d = desired(text);
    let observed: BTreeMap<Address, Observation> =
        obs.iter().map(|(k, o)| (a(k), o.clone())).collect();
    let input = PlanInput {
        desired: &d,
        recorded: rec,
        observed: &observed,
        options: &opts,
    };
    let (changes, _) = diff(&input, &crate::resources::kind).map_err(|e| e.to_string())?;
    let mut lines: Vec<String> = changes
        .iter()
        .map(|c| {
            format!(
                "{} {}{}{} ({})",
                c.op.symbol(),
                c.address,
                if c.data_loss { " !" } else { "" },
                if c.protected { " protected" } else { "" },
                c.reasons.join("; ")
            )
        })
        .collect();
    if let Err(e) = refuse_protected(&changes, opts.allow_data_loss) {
        lines.push(format!("refused: {e}"));
    }
    Ok(lines)
}

#[test]
fn table() {
    let current = recorded(&desired(BASE));
    let none = BTreeMap::new();
    let failed = {
        let mut r = current.clone();
        let k = r.get_mut(&a("kernel.k")).unwrap();
        k.status = Status::Failed;
        k.error = Some("boom".into());
        r
    };
    // An apply killed while vm.a was booting, and while drive.tmp was being created for the
    // first time; and a first create of drive.data that failed before the drive left the
    // manifest.
    let interrupted = {
        let mut r = current.clone();
        let vm = r.get_mut(&a("vm.a")).unwrap();
        vm.status = Status::Pending;
        vm.step = Some("vm.spawned".into());
        let tmp = r.get_mut(&a("drive.tmp")).unwrap();
        *tmp = Record::intent(&desired(BASE)[&a("drive.tmp")], 2);
        tmp.step = Some("drive.intent".into());
        tmp.outputs = serde_json::json!({"path": "/s/drives/tmp.ext4"});
        let data = r.get_mut(&a("drive.data")).unwrap();
        *data = Record::intent(&desired(BASE)[&a("drive.data")], 2);
        data.status = Status::Failed;
        data.error = Some("mke2fs failed".into());
        r
    };
    let drifted = |what: &str| Observation::Drifted { what: what.into() };
    let missing = |what: &str| Observation::Missing { what: what.into() };
    let unprotected = recorded(&desired(&BASE.replace("protect = true\n", "")));
    let opts = PlanOptions::default;
    let with = |f: fn(&mut PlanOptions)| {
        let mut o = PlanOptions::default();
        f(&mut o);
        o
    };
    type Case<'a> = (
        &'a str,
        String,
        &'a BTreeMap<Address, Record>,
        Vec<(&'a str, Observation)>,
        PlanOptions,
        Result<Vec<&'a str>, &'a str>,
    );
    let cases: Vec<Case> = vec![
        ("nothing changed", BASE.into(), &current, vec![], opts(), Ok(vec![])),
        ("observed ok", BASE.into(), &current, vec![("kernel.k", Observation::Ok)], opts(), Ok(vec![])),
        (
            "fresh host: everything is created",
            BASE.into(),
            &none,
            vec![],
            opts(),
            Ok(vec![
                "+ kernel.k (not yet created)",
                "+ rootfs.r (not yet created)",
                "+ template.t (not yet created)",
                "+ network.lan (not yet created)",
                "+ drive.a-root (not yet created)",
                "+ drive.data (not yet created)",
                "+ drive.tmp (not yet created)",
                "+ vm.a (not yet created)",
            ]),
        ),
        (
            "an asset's source changed: update in place",
            BASE.replace("/boot/vmlinux", "/boot/vmlinux-2"),
            &current,
            vec![],
            opts(),
            Ok(vec!["~ kernel.k (source.url changed)"]),
        ),
        (
            "an interrupted apply is redone; a never-created drive is no data loss",
            BASE.replace("[drive.data]\nsize = \"1GiB\"\nprotect = true\n", "").replace("drives = [\"data\"]\n", ""),
            &interrupted,
            vec![],
            opts(),
            Ok(vec![
                "- drive.data (no longer in the manifest; the last apply failed: mke2fs failed)",
                "+ drive.tmp (not yet created; an interrupted apply left it unfinished (after step drive.intent))",
                "~restart vm.a (an interrupted apply left it unfinished (after step vm.spawned); drives changed)",
            ]),
        ),
        (
            "an interrupted apply with nothing changed is redone in place",
            BASE.into(),
            &interrupted,
            vec![],
            opts(),
            Ok(vec![
                "+ drive.data (not yet created; the last apply failed: mke2fs failed)",
                "+ drive.tmp (not yet created; an interrupted apply left it unfinished (after step drive.intent))",
                "~ vm.a (an interrupted apply left it unfinished (after step vm.spawned))",
            ]),
        ),
        (
            "a cmdline change is in place",
            BASE.replace("url = \"/boot/vmlinux\"", "url = \"/boot/vmlinux\"\ncmdline = \"quiet\""),
            &current,
            vec![],
            opts(),
            Ok(vec!["~ kernel.k (cmdline changed)"]),
        ),
        (
            "vm memory needs a restart",
            BASE.replace("drives = [\"data\"]", "drives = [\"data\"]\nmemory = \"1GiB\""),
            &current,
            vec![],
            opts(),
            Ok(vec!["~restart vm.a (memory changed)"]),
        ),
        (
            "vm state is in place",
            BASE.replace("drives = [\"data\"]", "drives = [\"data\"]\nstate = \"stopped\""),
            &current,
            vec![],
            opts(),
            Ok(vec!["~ vm.a (state changed)"]),
        ),
        (
            "a network's cidr forces replacement",
            BASE.replace("10.77.0.0/24", "10.78.0.0/24"),
            &current,
            vec![],
            opts(),
            Ok(vec!["-/+ network.lan (cidr changed; gateway changed)"]),
        ),
        (
            "growing a drive is in place",
            BASE.replace("[drive.tmp]\nsize = \"1GiB\"", "[drive.tmp]\nsize = \"2GiB\""),
            &current,
            vec![],
            opts(),
            Ok(vec!["~ drive.tmp (size changed)"]),
        ),
        (
            "a template change does not touch drives",
            BASE.replace("size = \"1GiB\"\n[network", "size = \"2GiB\"\n[network"),
            &current,
            vec![],
            opts(),
            Ok(vec!["~ template.t (size changed)"]),
        ),
        (
            "removed from the manifest: destroyed",
            BASE.replace("[drive.tmp]\nsize = \"1GiB\"\n", ""),
            &current,
            vec![],
            opts(),
            Ok(vec!["- drive.tmp ! (no longer in the manifest)"]),
        ),
        (
            "a protected drive's destroy is planned, and executing it refused",
            BASE.replace("[drive.data]\nsize = \"1GiB\"\nprotect = true\n", "").replace("drives = [\"data\"]\n", ""),
            &current,
            vec![],
            opts(),
            Ok(vec![
                "- drive.data ! protected (no longer in the manifest)",
                "~restart vm.a (drives changed)",
                "refused: drive.data is protected (protect = true) and this plan would destroy it, losing its data; re-run with --allow-data-loss if that is what you want",
            ]),
        ),
        (
            "unless data loss is allowed",
            BASE.replace("[drive.data]\nsize = \"1GiB\"\nprotect = true\n", "").replace("drives = [\"data\"]\n", ""),
            &current,
            vec![],
            with(|o| o.allow_data_loss = true),
            Ok(vec!["- drive.data ! protected (no longer in the manifest)", "~restart vm.a (drives changed)"]),
        ),
        (
            "protect = false in the same plan does not lift it: the record still has it",
            BASE.replace("protect = true\n", "protect = false\n"),
            &current,
            vec![],
            with(|o| o.replace = vec!["drive.data".parse().unwrap()]),
            Ok(vec![
                "-/+ drive.data ! protected (replacement requested (--replace))",
                "refused: drive.data is protected (protect = true) and this plan would replace it, losing its data; re-run with --allow-data-loss if that is what you want",
            ]),
        ),
        (
            "--replace an unprotected drive",
            BASE.into(),
            &current,
            vec![],
            with(|o| o.replace = vec!["drive.tmp".parse().unwrap()]),
            Ok(vec!["-/+ drive.tmp ! (replacement requested (--replace))"]),
        ),
        (
            "--replace a protected drive: planned, and executing it refused",
            BASE.into(),
            &current,
            vec![],
            with(|o| o.replace = vec!["drive.data".parse().unwrap()]),
            Ok(vec![
                "-/+ drive.data ! protected (replacement requested (--replace))",
                "refused: drive.data is protected (protect = true) and this plan would replace it, losing its data; re-run with --allow-data-loss if that is what you want",
            ]),
        ),
        (
            "--replace something unknown",
            BASE.into(),
            &current,
            vec![],
            with(|o| o.replace = vec!["drive.nope".parse().unwrap()]),
            Err("--replace drive.nope: not in the manifest"),
        ),
        (
            "missing on the host: created again",
            BASE.into(),
            &current,
            vec![("kernel.k", missing("cache entry /c/x is missing"))],
            opts(),
            Ok(vec!["+ kernel.k (drift: cache entry /c/x is missing)"]),
        ),
        (
            "modified on the host: updated",
            BASE.into(),
            &current,
            vec![("rootfs.r", drifted("cache entry /c/y was modified"))],
            opts(),
            Ok(vec!["~ rootfs.r (drift: cache entry /c/y was modified)"]),
        ),
        (
            "a failed resource is redone",
            BASE.into(),
            &failed,
            vec![],
            opts(),
            Ok(vec!["~ kernel.k (the last apply failed: boom)"]),
        ),
        (
            "--target takes what the target needs",
            BASE.into(),
            &none,
            vec![],
            with(|o| o.targets = vec!["template.t".parse().unwrap()]),
            Ok(vec!["+ rootfs.r (not yet created)", "+ template.t (not yet created)"]),
        ),
        (
            "destroy everything, dependents first in execution (listed by address)",
            BASE.replace("[drive.data]\nsize = \"1GiB\"\nprotect = true\n", "[drive.data]\nsize = \"1GiB\"\n"),
            &unprotected,
            vec![],
            with(|o| o.destroy = true),
            Ok(vec![
                "- kernel.k (destroy requested)",
                "- rootfs.r (destroy requested)",
                "- template.t (destroy requested)",
                "- network.lan (destroy requested)",
                "- drive.a-root ! (destroy requested)",
                "- drive.data ! (destroy requested)",
                "- drive.tmp ! (destroy requested)",
                "- vm.a (destroy requested)",
            ]),
        ),
        (
            "destroy --target takes what depends on it",
            BASE.replace("protect = true\n", ""),
            &unprotected,
            vec![],
            with(|o| {
                o.destroy = true;
                o.targets = vec!["template.t".parse().unwrap()];
            }),
            Ok(vec![
                "- template.t (destroy requested)",
                "- drive.a-root ! (destroy requested)",
                "- vm.a (destroy requested)",
            ]),
        ),
        (
            "destroy refuses protected drives",
            BASE.into(),
            &current,
            vec![],
            with(|o| o.destroy = true),
            Ok(vec![
                "- kernel.k (destroy requested)",
                "- rootfs.r (destroy requested)",
                "- template.t (destroy requested)",
                "- network.lan (destroy requested)",
                "- drive.a-root ! (destroy requested)",
                "- drive.data ! protected (destroy requested)",
                "- drive.tmp ! (destroy requested)",
                "- vm.a (destroy requested)",
                "refused: drive.data is protected (protect = true) and this plan would destroy it, losing its data; re-run with --allow-data-loss if that is what you want",
            ]),
        ),
        (
            "destroy --allow-data-loss",
            BASE.into(),
            &current,
            vec![],
            with(|o| {
                o.destroy = true;
                o.allow_data_loss = true;
                o.targets = vec!["drive.data".parse().unwrap()];
            }),
            Ok(vec![
                "- drive.data ! protected (destroy requested)",
                "- vm.a (destroy requested)",
            ]),
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, rec, obs, o, want) in cases {
        let got = run(&text, rec, &obs, o);
        let want = want
            .map(|v| v.into_iter().map(String::from).collect::<Vec<_>>())
            .map_err(String::from);
        if got != want {
            failures.push(format!("{name}:\n  got:  {got:?}\n  want: {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn field_diffs_recurse_and_keep_both_sides() {
    let before =
        serde_json::json!({"source": {"url": "a", "sha256": null}, "cmdline": "x", "gone": 1});
    let after = serde_json::json!({"source": {"url": "b", "sha256": "f"}, "cmdline": "x"});
    let d = field_diffs(crate::resources::kind(crate::Kind::Kernel), &before, &after);
    let got: Vec<(String, Option<serde_json::Value>, Option<serde_json::Value>)> = d
        .into_iter()
        .map(|f| (f.field, f.before, f.after))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "source.sha256".into(),
                Some(serde_json::Value::Null),
                Some("f".into())
            ),
            ("source.url".into(), Some("a".into()), Some("b".into())),
            ("gone".into(), Some(1.into()), None),
        ]
    );
}
