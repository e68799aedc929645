#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use super::render::{json, markdown, text};
use super::*;
use crate::manifest::{host_names, load_sources, Fs, Source};
use crate::plan::render::Style;

const BASE: &str = "[fort]\nversion = 1\n[kernel.k]\nurl = \"/k\"\n[rootfs.r]\nurl = \"/r.tar\"\n[template.t]\nrootfs = \"r\"\nsize = \"1GiB\"\n";

fn sources(text: &str) -> Vec<Source> {
    vec![Source {
        path: PathBuf::from("fort.toml"),
        dir: PathBuf::from("/repo"),
        text: format!("{BASE}{text}"),
        sandbox: false,
    }]
}

/// `fort diff a..b` of two texts (appended to BASE), for `host` or every host named.
fn diff_of(before: &str, after: &str, host: Option<&str>) -> Diff {
    let (a, b) = (sources(before), sources(after));
    let names = [host_names(&a), host_names(&b)];
    let hosts = selections(host, &[&names[0], &names[1]])
        .iter()
        .map(|sel| {
            let m = |s: &[Source]| load_sources(s, Path::new("/repo"), sel, &Fs).unwrap();
            host_diff(sel.host().map(str::to_string), &m(&a), &m(&b)).unwrap()
        })
        .collect();
    Diff {
        format_version: FORMAT_VERSION,
        fort_version: "test".into(),
        from: End {
            rev: "main".into(),
            commit: Some("1111111aaaa".into()),
        },
        to: End {
            rev: "feature".into(),
            commit: Some("2222222bbbb".into()),
        },
        path: PathBuf::from("fort.toml"),
        hosts,
    }
}

fn plain(d: &Diff) -> String {
    text(d, Style { color: false })
}

const VM: &str = "[vm.web]\nkernel = \"k\"\nroot = { template = \"t\", size = \"1GiB\" }\n";

#[test]
fn changes_are_printed_as_plans_print_them() {
    let net = "[network.lan]\ncidr = \"10.1.0.0/24\"\n";
    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "nothing changes",
            VM.to_string(),
            VM.to_string(),
            "main (1111111) → feature (2222222), manifest fort.toml\n\nNo changes.\n",
        ),
        (
            "an addition",
            String::new(),
            "[drive.data]\nsize = \"2GiB\"\n".to_string(),
            "main (1111111) → feature (2222222), manifest fort.toml\n\n  + drive.data\n      reason: added\n\nPlan: 1 to create, 0 to update, 0 to restart, 0 to replace, 0 to destroy.\n",
        ),
        (
            "a removal that loses data",
            "[drive.data]\nsize = \"2GiB\"\n".to_string(),
            String::new(),
            "main (1111111) → feature (2222222), manifest fort.toml\n\n  - drive.data !\n      reason: removed\n      ! the data on it will be lost\n\nPlan: 0 to create, 0 to update, 0 to restart, 0 to replace, 1 to destroy.\n",
        ),
        (
            "a protected drive's removal says apply refuses it",
            "[drive.data]\nsize = \"2GiB\"\nprotect = true\n".to_string(),
            String::new(),
            "main (1111111) → feature (2222222), manifest fort.toml\n\n  - drive.data !\n      reason: removed\n      ! the data on it will be lost\n      note: drive.data is protected (protect = true): fort apply refuses this without --allow-data-loss\n\nPlan: 0 to create, 0 to update, 0 to restart, 0 to replace, 1 to destroy.\n",
        ),
        (
            "in place: a drive grows",
            "[drive.data]\nsize = \"2GiB\"\n".to_string(),
            "[drive.data]\nsize = \"3GiB\"\n".to_string(),
            "main (1111111) → feature (2222222), manifest fort.toml\n\n  ~ drive.data\n      ~ size: 2GiB → 3GiB\n\nPlan: 0 to create, 1 to update, 0 to restart, 0 to replace, 0 to destroy.\n",
        ),
        (
            "a restart: more memory",
            VM.to_string(),
            format!("{VM}memory = \"1GiB\"\n"),
            "main (1111111) → feature (2222222), manifest fort.toml\n\n  ~restart vm.web\n      ~ memory: 512MiB → 1GiB  (needs restart)\n\nPlan: 0 to create, 0 to update, 1 to restart, 0 to replace, 0 to destroy.\n",
        ),
        (
            "a replacement: a network's range",
            net.to_string(),
            net.replace("10.1.0.0", "10.2.0.0"),
            "main (1111111) → feature (2222222), manifest fort.toml\n\n  -/+ network.lan\n      ~ cidr: \"10.1.0.0/24\" → \"10.2.0.0/24\"  (forces replacement)\n      ~ gateway: \"10.1.0.1\" → \"10.2.0.1\"  (forces replacement)\n      egress: none (nothing leaves the network)\n      host: closed to guests (ICMP and replies pass)\n\nPlan: 0 to create, 0 to update, 0 to restart, 1 to replace, 0 to destroy.\n",
        ),
    ];
    for (what, before, after, want) in cases {
        assert_eq!(plain(&diff_of(&before, &after, None)), want, "{what}");
    }
}

#[test]
fn each_host_gets_its_own_plan() {
    let on = |h: &str| format!("{VM}hosts = [\"{h}\"]\n");
    // The VM moves from h1 to h2: it leaves one and appears on the other.
    let d = diff_of(&on("h1"), &on("h2"), None);
    assert_eq!(
        plain(&d),
        "main (1111111) → feature (2222222), manifest fort.toml\n\n\
         Host h1:\n\n\
         \x20 - drive.web-root !\n      reason: removed\n      ! the data on it will be lost\n\n\
         \x20 - vm.web\n      reason: removed\n\n\
         Plan: 0 to create, 0 to update, 0 to restart, 0 to replace, 2 to destroy.\n\n\
         Host h2:\n\n\
         \x20 + drive.web-root\n      reason: added\n\n\
         \x20 + vm.web\n      reason: added\n\n\
         Plan: 2 to create, 0 to update, 0 to restart, 0 to replace, 0 to destroy.\n"
    );
    // --host picks one view; a host the change does not touch has none.
    let h2 = diff_of(&on("h1"), &on("h2"), Some("h2"));
    assert_eq!(h2.hosts.len(), 1);
    assert_eq!(h2.hosts[0].summary.create, 2);
    let h3 = diff_of(&on("h1"), &on("h2"), Some("h3"));
    assert!(h3.is_empty());
    assert_eq!(
        plain(&h3),
        "main (1111111) → feature (2222222), manifest fort.toml\n\nHost h3:\n\nNo changes.\n"
    );
}

#[test]
fn json_is_exact() {
    let d = diff_of(
        "",
        "[drive.data]\nsize = \"2GiB\"\nhosts = [\"h1\"]\n",
        None,
    );
    let want = serde_json::json!({
        "format_version": 1,
        "fort_version": "test",
        "from": {"rev": "main", "commit": "1111111aaaa"},
        "to": {"rev": "feature", "commit": "2222222bbbb"},
        "path": "fort.toml",
        "hosts": [{
            "host": "h1",
            "changes": [{
                "address": "drive.data",
                "op": "create",
                "reasons": ["added"],
                "data_loss": false,
                "protected": false,
                "fields": []
            }],
            "notes": [],
            "summary": {"create": 1, "update": 0, "restart": 0, "replace": 0, "destroy": 0, "leftovers": 0}
        }]
    });
    let got: serde_json::Value = serde_json::from_str(&json(&d)).unwrap();
    assert_eq!(got, want);
}

#[test]
fn markdown_is_a_table_and_collapsed_plans() {
    let on = |h: &str| format!("{VM}hosts = [\"{h}\"]\n");
    let d = diff_of(&on("h1"), &on("h2"), None);
    assert_eq!(
        markdown(&d),
        "### fort diff: `main` (`1111111`) → `feature` (`2222222`), manifest `fort.toml`\n\n\
         | host | create | update | restart | replace | destroy | data loss |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n\
         | `h1` | 0 | 0 | 0 | 0 | 2 | **1 !** |\n\
         | `h2` | 2 | 0 | 0 | 0 | 0 | 0 |\n\
         \n<details><summary><b>h1</b>: Plan: 0 to create, 0 to update, 0 to restart, 0 to replace, 2 to destroy.</summary>\n\n\
         ```text\n\
         \x20 - drive.web-root !\n      reason: removed\n      ! the data on it will be lost\n\n\
         \x20 - vm.web\n      reason: removed\n\n\
         ```\n\n</details>\n\
         \n<details><summary><b>h2</b>: Plan: 2 to create, 0 to update, 0 to restart, 0 to replace, 0 to destroy.</summary>\n\n\
         ```text\n\
         \x20 + drive.web-root\n      reason: added\n\n\
         \x20 + vm.web\n      reason: added\n\n\
         ```\n\n</details>\n"
    );
    assert_eq!(
        markdown(&diff_of(VM, VM, None)),
        "### fort diff: `main` (`1111111`) → `feature` (`2222222`), manifest `fort.toml`\n\nNo changes.\n"
    );
}

#[test]
fn ranges_parse() {
    let rev = |s: &str| Side::Rev(s.to_string());
    let ok = |from, to, merge_base| {
        Ok(Range {
            from,
            to,
            merge_base,
        })
    };
    let cases: Vec<(&str, Result<Range, String>)> = vec![
        ("main..feature", ok(rev("main"), rev("feature"), false)),
        ("main..", ok(rev("main"), rev("HEAD"), false)),
        ("..feature", ok(rev("HEAD"), rev("feature"), false)),
        ("main...feature", ok(rev("main"), rev("feature"), true)),
        ("HEAD~2", ok(rev("HEAD~2"), Side::WorkTree, false)),
        ("..", Err("`..` is not a revision range: expected REV_A..REV_B (or REV_A...REV_B, REV_A.., ..REV_B, REV)".into())),
        ("a..b..c", Err("`a..b..c` is not a revision range: expected REV_A..REV_B (or REV_A...REV_B, REV_A.., ..REV_B, REV)".into())),
        ("", Err("an empty revision range: expected REV_A..REV_B or REV".into())),
    ];
    for (s, want) in cases {
        assert_eq!(parse_range(s), want, "{s}");
    }
}
