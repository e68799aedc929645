//! End-to-end tests of the `fort` binary on assets: real HTTP on 127.0.0.1, real files, real
//! SQLite. Every apply is followed by an empty `plan --detailed-exitcode`.

#![allow(clippy::unwrap_used)]

mod common;

use common::assets::publish_assets;
use common::fort::{sha256_hex, Workspace};
use common::server::{Reply, Server};

#[test]
fn apply_converges_and_is_idempotent() {
    let srv = Server::start();
    let ws = Workspace::new();
    ws.write_manifest(&publish_assets(&srv));

    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout
            .contains("  + kernel.k\n      reason: not yet created\n"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.ends_with(
            "Plan: 3 to create, 0 to update, 0 to restart, 0 to replace, 0 to destroy.\n"
        ),
        "{}",
        plan.stdout
    );
    assert!(
        !ws.state_dir().exists(),
        "plan must not create the state dir"
    );

    let apply = ws.run(&["apply", "--yes"]);
    apply.ok();
    assert!(
        apply.stdout.contains(
            "Apply complete: 3 created, 0 updated, 0 restarted, 0 replaced, 0 destroyed."
        ),
        "{}",
        apply.stdout
    );

    ws.run(&["plan", "--detailed-exitcode"]).ok();
    let hits = srv.total_hits();
    let again = ws.run(&["apply", "--yes"]);
    again.ok();
    assert_eq!(again.stdout, "No changes. The host matches the manifest.\n");
    assert_eq!(
        srv.total_hits(),
        hits,
        "a second apply must make no request"
    );

    // The outputs are real: decompressed kernel, extracted firecracker member that runs.
    let show = ws.run(&["state", "show", "firecracker.fc", "--json"]);
    let rec: serde_json::Value = serde_json::from_str(&show.ok().stdout).unwrap();
    assert_eq!(rec["outputs"]["version"], "Firecracker v1.12.0");
    // The jailer from the same archive, extracted executable and checked to answer.
    let jailer = rec["outputs"]["jailer"]["path"].as_str().unwrap();
    assert_eq!(
        std::fs::read(jailer).unwrap(),
        b"#!/bin/sh\necho 'Jailer v1.12.0'\n"
    );
    let kernel: serde_json::Value =
        serde_json::from_str(&ws.run(&["state", "show", "kernel.k", "--json"]).stdout).unwrap();
    let path = kernel["outputs"]["path"].as_str().unwrap();
    assert_eq!(
        std::fs::read(path).unwrap(),
        b"not really a kernel, but bytes all the same\n".repeat(5000)
    );
}

#[test]
fn drift_is_planned_and_repaired() {
    let srv = Server::start();
    let ws = Workspace::new();
    ws.write_manifest(&publish_assets(&srv));
    ws.run(&["apply", "--yes"]).ok();

    let kernel: serde_json::Value =
        serde_json::from_str(&ws.run(&["state", "show", "kernel.k", "--json"]).stdout).unwrap();
    let path = kernel["outputs"]["path"].as_str().unwrap().to_string();
    std::fs::remove_file(&path).unwrap();
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains(&format!(
            "  + kernel.k\n      reason: drift: cache entry {path} is missing\n"
        )),
        "{}",
        plan.stdout
    );
    ws.run(&["apply", "--yes"]).ok();
    ws.run(&["plan", "--detailed-exitcode"]).ok();

    // Corrupt it in place: same size, different bytes.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains(&format!(
            "  ~ kernel.k\n      reason: drift: cache entry {path} was modified"
        )),
        "{}",
        plan.stdout
    );
    ws.run(&["apply", "--yes"]).ok();
    ws.run(&["plan", "--detailed-exitcode"]).ok();
    assert_eq!(std::fs::read(&path).unwrap()[0], bytes[0] ^ 0xff);
}

#[test]
fn checksum_mismatch_leaves_cache_and_state_as_they_were() {
    let srv = Server::start();
    let ws = Workspace::new();
    srv.route("/k", Reply::ok(b"kernel bytes".to_vec()));
    ws.write_manifest(&format!(
        "[kernel.k]\nurl = \"{}\"\nsha256 = \"{}\"\n",
        srv.url("/k"),
        "0".repeat(64)
    ));
    let apply = ws.run(&["apply", "--yes"]);
    apply.code(1);
    let want = format!(
        "kernel.k: creating failed: checksum mismatch for kernel.k: expected {}, got {} ({})",
        "0".repeat(64),
        sha256_hex(b"kernel bytes"),
        srv.url("/k")
    );
    assert!(apply.stdout.contains(&want), "{}", apply.stdout);
    assert_eq!(srv.hits("/k"), 1, "a checksum mismatch is not retried");
    assert_eq!(ws.cache_files(), Vec::<String>::new());
    assert_eq!(
        ws.run(&["state", "list"]).ok().stdout,
        "No resources recorded.\n"
    );
    let history = ws.run(&["history", "kernel.k"]).ok().stdout.clone();
    assert!(
        history.contains("fail     pending → -  create failed: checksum mismatch"),
        "{history}"
    );
    // The next plan says why it is still to be created.
    let plan = ws.run(&["plan"]);
    plan.ok();
    assert!(
        plan.stdout.contains(&format!(
            "  + kernel.k\n      reason: not yet created\n      reason: the last apply failed: checksum mismatch for kernel.k: expected {}",
            "0".repeat(64)
        )),
        "{}",
        plan.stdout
    );
}

#[test]
fn http_404_is_not_retried_and_500_is() {
    let srv = Server::start();
    let ws = Workspace::new();
    srv.route("/gone", Reply::status(404));
    srv.route("/flaky", Reply::status(500));
    ws.write_manifest(&format!(
        "[kernel.gone]\nurl = \"{}\"\nsha256 = \"{s}\"\n\n[kernel.flaky]\nurl = \"{}\"\nsha256 = \"{s}\"\n",
        srv.url("/gone"),
        srv.url("/flaky"),
        s = "a".repeat(64)
    ));
    let apply = ws.run(&["apply", "--yes"]);
    apply.code(1);
    assert_eq!(srv.hits("/gone"), 1);
    assert_eq!(srv.hits("/flaky"), 4, "retried up to 4 attempts");
    assert!(
        apply.stdout.contains("kernel.flaky: attempt 1 failed"),
        "{}",
        apply.stdout
    );
    assert!(apply.stdout.contains("Apply failed: 0 created, 0 updated, 0 restarted, 0 replaced, 0 destroyed, 2 failed, 0 skipped."), "{}", apply.stdout);
}

#[test]
fn a_failure_skips_dependents_and_unrelated_branches_go_on() {
    let srv = Server::start();
    let ws = Workspace::new();
    srv.route("/gone", Reply::status(404));
    srv.route("/k", Reply::ok(b"kernel".to_vec()));
    ws.write_manifest(&format!(
        "[rootfs.r]\nurl = \"{}\"\nsha256 = \"{}\"\n\n[template.t]\nrootfs = \"r\"\nsize = \"64MiB\"\n\n[kernel.k]\nurl = \"{}\"\nsha256 = \"{}\"\n",
        srv.url("/gone"),
        "a".repeat(64),
        srv.url("/k"),
        sha256_hex(b"kernel")
    ));
    let apply = ws.run(&["apply", "--yes"]);
    apply.code(1);
    assert!(
        apply
            .stdout
            .contains("template.t: skipped, because rootfs.r did not succeed"),
        "{}",
        apply.stdout
    );
    assert!(
        apply.stdout.contains("kernel.k: created in"),
        "{}",
        apply.stdout
    );
    let list = ws.run(&["state", "list"]).ok().stdout.clone();
    assert!(
        list.contains("kernel.k") && !list.contains("rootfs.r"),
        "{list}"
    );
}

#[test]
fn no_terminal_and_no_yes_refuses() {
    let srv = Server::start();
    let ws = Workspace::new();
    ws.write_manifest(&publish_assets(&srv));
    let apply = ws.run(&["apply"]);
    apply.code(1);
    assert!(apply.stderr.contains("error: refusing to change the host without confirmation: stdin is not a terminal; re-run with --yes to apply this plan"), "{}", apply.stderr);
    assert_eq!(
        srv.total_hits(),
        0,
        "planning reads nothing from the network"
    );
    assert!(ws.cache_files().is_empty());
}

#[test]
fn saved_plans_apply_once_and_stale_ones_are_refused() {
    let srv = Server::start();
    let ws = Workspace::new();
    ws.write_manifest(&publish_assets(&srv));
    let plan_file = ws.path().join("p.json");
    let pf = plan_file.to_str().unwrap();
    ws.run(&["plan", "-out", pf]).ok();
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan_file).unwrap()).unwrap();
    assert_eq!(saved["format_version"], 1);
    assert_eq!(saved["summary"]["create"], 3);

    // Apply it: no question asked even without a terminal.
    ws.run(&["apply", pf]).ok();
    // Applying it again: the state changed since.
    let again = ws.run(&["apply", pf]);
    again.code(1);
    assert!(again.stderr.contains(&format!("error: saved plan {pf} is stale: the recorded state changed since it was made; run `fort plan -out {pf}` again")), "{}", again.stderr);

    // A manifest edit makes a saved plan stale too.
    ws.run(&["plan", "--out", pf]).ok();
    let m = std::fs::read_to_string(ws.manifest()).unwrap();
    std::fs::write(
        ws.manifest(),
        m + "\n[kernel.extra]\nurl = \"/nonexistent\"\n",
    )
    .unwrap();
    let stale = ws.run(&["apply", pf]);
    stale.code(1);
    assert!(
        stale.stderr.contains(&format!(
            "error: saved plan {pf} is stale: the manifest changed since it was made"
        )),
        "{}",
        stale.stderr
    );
}

#[test]
fn newer_state_database_is_refused_and_left_alone() {
    let ws = Workspace::new();
    ws.write_manifest("[kernel.k]\nurl = \"/boot/none\"\n");
    std::fs::create_dir_all(ws.state_dir()).unwrap();
    let db = ws.state_dir().join("state.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL); INSERT INTO meta VALUES('schema_version','7');").unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    for args in [&["plan"][..], &["apply", "--yes"][..]] {
        let r = ws.run(args);
        r.code(1);
        assert!(r.stderr.contains(&format!("error: state database {} has schema version 7, newer than this fort supports (5); upgrade fort, the database was left untouched", db.display())), "{}", r.stderr);
    }
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

#[test]
fn destroy_removes_cache_entries_and_rows_and_keeps_history() {
    let srv = Server::start();
    let ws = Workspace::new();
    ws.write_manifest(&publish_assets(&srv));
    ws.run(&["apply", "--yes"]).ok();
    assert!(!ws.cache_files().is_empty());
    let d = ws.run(&["destroy", "--yes"]);
    d.ok();
    assert!(
        d.stdout
            .contains("  - firecracker.fc\n      reason: destroy requested\n"),
        "{}",
        d.stdout
    );
    assert!(
        d.stdout.contains(
            "Destroy complete: 0 created, 0 updated, 0 restarted, 0 replaced, 3 destroyed."
        ),
        "{}",
        d.stdout
    );
    assert!(
        ws.cache_files().iter().all(|f| f.starts_with("tmp/")),
        "{:?}",
        ws.cache_files()
    );
    assert_eq!(
        ws.run(&["state", "list"]).ok().stdout,
        "No resources recorded.\n"
    );
    let h = ws.run(&["history", "kernel.k"]).ok().stdout.clone();
    let actions: Vec<&str> = h
        .lines()
        .map(|l| l.split_whitespace().nth(3).unwrap())
        .collect();
    assert_eq!(actions, ["create", "destroy"], "{h}");
    // And the manifest is still there: the next plan wants everything back.
    ws.run(&["plan", "--detailed-exitcode"]).code(2);
}

#[test]
fn removing_a_resource_from_the_manifest_destroys_it_and_target_limits_the_plan() {
    let srv = Server::start();
    let ws = Workspace::new();
    let assets = publish_assets(&srv);
    ws.write_manifest(&assets);
    ws.run(&["apply", "--yes", "--target", "kernel.k"]).ok();
    let list = ws.run(&["state", "list"]).ok().stdout.clone();
    assert!(
        list.contains("kernel.k") && !list.contains("rootfs.r"),
        "{list}"
    );
    ws.run(&["apply", "--yes"]).ok();
    // Drop the rootfs from the manifest.
    let without: String = assets.split("[rootfs.r]").next().unwrap().to_string()
        + &assets
            .split("[firecracker.fc]")
            .nth(1)
            .map(|s| format!("[firecracker.fc]{s}"))
            .unwrap();
    ws.write_manifest(&without);
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout
            .contains("  - rootfs.r\n      reason: no longer in the manifest\n"),
        "{}",
        plan.stdout
    );
    ws.run(&["apply", "--yes"]).ok();
    ws.run(&["plan", "--detailed-exitcode"]).ok();
    let bad = ws.run(&["plan", "--target", "kernel.nope"]);
    bad.code(1);
    assert!(
        bad.stderr
            .contains("error: --target kernel.nope: no such resource in the manifest or the state"),
        "{}",
        bad.stderr
    );
}

#[test]
fn validate_reports_every_problem_with_its_place_and_changes_nothing() {
    let ws = Workspace::new();
    ws.write_manifest("[kernel.k]\nurl = \"https://x/y\"\n[vm.a]\nkernel = \"q\"\nroot = \"r\"\n");
    let m = ws.manifest().display().to_string();
    for args in [&["validate"][..], &["plan"][..], &["apply", "--yes"][..]] {
        let r = ws.run(args);
        r.code(1);
        assert_eq!(
            r.stderr,
            format!(
                "error: {m}:5:7: kernel.k: a remote url must be verified: add `sha256 = \"…\"` or `sha256_url = \"…\"`\n\
                 error: {m}:7:10: vm.a: kernel `q` is not defined (defined: k)\n\
                 error: {m}:8:8: vm.a: drive `r` is not defined (no drive is defined)\n\
                 hint: fix the manifest; nothing was changed on the host\n"
            )
        );
    }
    assert!(!ws.state_dir().exists());
    let ok = Workspace::new();
    ok.write_manifest("[kernel.k]\nurl = \"/boot/vmlinux\"\n");
    assert_eq!(
        ok.run(&["validate"]).ok().stdout,
        "The manifest is valid: 1 resource (1 kernel) in 1 file.\n"
    );
    let missing = ok.path().join("nope.toml");
    let r = common::fort::Run::from(
        std::process::Command::new(common::fort::FORT)
            .args(["-f", missing.to_str().unwrap(), "validate"])
            .output()
            .unwrap(),
    );
    r.code(1);
    assert!(
        r.stderr.starts_with(&format!(
            "error: cannot read manifest {}: No such file or directory",
            missing.display()
        )),
        "{}",
        r.stderr
    );
}

#[test]
fn changing_an_asset_fetches_the_new_one_and_drops_the_old_entry() {
    let srv = Server::start();
    let ws = Workspace::new();
    srv.route("/v1", Reply::ok(b"kernel one".to_vec()));
    srv.route("/v2", Reply::ok(b"kernel two".to_vec()));
    let manifest = |v: &str, data: &[u8]| {
        format!(
            "[kernel.k]\nurl = \"{}\"\nsha256 = \"{}\"\n",
            srv.url(v),
            sha256_hex(data)
        )
    };
    ws.write_manifest(&manifest("/v1", b"kernel one"));
    ws.run(&["apply", "--yes"]).ok();
    let one = sha256_hex(b"kernel one");
    assert_eq!(ws.cache_files(), [one.clone(), format!("{one}.sha256")]);

    ws.write_manifest(&manifest("/v2", b"kernel two"));
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains(&format!(
            "  ~ kernel.k\n      ~ source.sha256: \"{}\" → \"{}\"\n      ~ source.url: \"{}\" → \"{}\"\n",
            one,
            sha256_hex(b"kernel two"),
            srv.url("/v1"),
            srv.url("/v2")
        )),
        "{}",
        plan.stdout
    );
    let apply = ws.run(&["apply", "--yes"]);
    apply.ok();
    assert!(
        apply
            .stdout
            .contains("Apply complete: 0 created, 1 updated"),
        "{}",
        apply.stdout
    );
    let two = sha256_hex(b"kernel two");
    assert_eq!(ws.cache_files(), [two.clone(), format!("{two}.sha256")]);
    ws.run(&["plan", "--detailed-exitcode"]).ok();
    let h = ws.run(&["history", "kernel.k"]).ok().stdout.clone();
    let actions: Vec<&str> = h
        .lines()
        .map(|l| l.split_whitespace().nth(3).unwrap())
        .collect();
    assert_eq!(actions, ["create", "update"], "{h}");
}

/// The fingerprint of a state dir and a drive file: `state list`, every resource's history,
/// the runs recorded and the drive's bytes. Equal before and after = nothing was changed.
fn untouched(ws: &Workspace, drive: &str) -> (String, String, String) {
    let list = ws.run(&["state", "list", "--json"]).ok().stdout.clone();
    let history = ws.run(&["history", "drive.data"]).ok().stdout.clone();
    (list, history, sha256_hex(&std::fs::read(drive).unwrap()))
}

#[test]
fn protected_drives_are_planned_and_only_lost_with_allow_data_loss() {
    let ws = Workspace::new();
    let with_drive = "[drive.data]\nsize = \"16MiB\"\nprotect = true\n";
    ws.write_manifest(with_drive);
    ws.run(&["apply", "--yes"]).ok();
    let rec: serde_json::Value =
        serde_json::from_str(&ws.run(&["state", "show", "drive.data", "--json"]).stdout).unwrap();
    let drive = rec["outputs"]["path"].as_str().unwrap().to_string();
    let before = untouched(&ws, &drive);
    let refused = |action: &str| {
        format!("error: drive.data is protected (protect = true) and this plan would {action} it, losing its data; re-run with --allow-data-loss if that is what you want\n")
    };

    // Removed from the manifest: a plain plan shows the destroy, the refusal and counts it.
    ws.write_manifest("");
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert_eq!(
        plan.stdout,
        "fort will perform the following actions:\n\n\
         \x20 - drive.data !\n\
         \x20     reason: no longer in the manifest\n\
         \x20     ! the data on it will be lost\n\
         \x20     note: drive.data is protected (protect = true): fort apply refuses this without --allow-data-loss\n\
         \n\
         Plan: 0 to create, 0 to update, 0 to restart, 0 to replace, 1 to destroy.\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ws.run(&["plan", "--json"]).ok().stdout).unwrap();
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["changes"][0]["address"], "drive.data");
    assert_eq!(json["changes"][0]["protected"], true);
    assert_eq!(json["options"]["allow_data_loss"], false);

    // apply and destroy refuse it with the same words, before anything is shown or changed.
    for args in [&["apply", "--yes"][..], &["destroy", "--yes"][..]] {
        let r = ws.run(args);
        r.code(1);
        assert_eq!(r.stderr, refused("destroy"), "{args:?}");
        assert_eq!(r.stdout, "", "{args:?}");
        assert_eq!(untouched(&ws, &drive), before, "{args:?}");
    }
    // So does a saved plan made without --allow-data-loss.
    let saved = ws.path().join("p.json");
    let pf = saved.to_str().unwrap();
    ws.run(&["plan", "-out", pf]).ok();
    let r = ws.run(&["apply", pf]);
    r.code(1);
    assert_eq!(r.stderr, refused("destroy"));
    assert_eq!(untouched(&ws, &drive), before);

    // --replace: planned as `-/+ !` with the note, refused by apply.
    ws.write_manifest(with_drive);
    let plan = ws.run(&["plan", "--detailed-exitcode", "--replace", "drive.data"]);
    plan.code(2);
    assert!(
        plan.stdout.contains(
            "  -/+ drive.data !\n      reason: replacement requested (--replace)\n      ! the data on it will be lost\n      note: drive.data is protected (protect = true): fort apply refuses this without --allow-data-loss\n\nPlan: 0 to create, 0 to update, 0 to restart, 1 to replace, 0 to destroy.\n"
        ),
        "{}",
        plan.stdout
    );
    let r = ws.run(&["apply", "--yes", "--replace", "drive.data"]);
    r.code(1);
    assert_eq!(r.stderr, refused("replace"));
    assert_eq!(untouched(&ws, &drive), before);

    // With --allow-data-loss it goes: a saved plan made with it, then apply given it.
    ws.run(&[
        "plan",
        "--replace",
        "drive.data",
        "--allow-data-loss",
        "-out",
        pf,
    ])
    .ok();
    let r = ws.run(&["apply", pf]);
    r.ok();
    assert!(
        r.stdout.contains(
            "      note: drive.data is protected (protect = true): allowed by --allow-data-loss\n"
        ),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(
            "Apply complete: 0 created, 0 updated, 0 restarted, 1 replaced, 0 destroyed."
        ),
        "{}",
        r.stdout
    );
    ws.write_manifest("");
    let r = ws.run(&["apply", "--yes", "--allow-data-loss"]);
    r.ok();
    assert!(r.stdout.contains("  - drive.data !\n"), "{}", r.stdout);
    assert!(!std::path::Path::new(&drive).exists());
    assert_eq!(
        ws.run(&["state", "list"]).ok().stdout,
        "No resources recorded.\n"
    );
}

#[test]
fn a_saved_plan_losing_a_protected_drive_runs_when_apply_is_given_allow_data_loss() {
    let ws = Workspace::new();
    ws.write_manifest("[drive.data]\nsize = \"16MiB\"\nprotect = true\n");
    ws.run(&["apply", "--yes"]).ok();
    ws.write_manifest("");
    let saved = ws.path().join("p.json");
    let pf = saved.to_str().unwrap();
    ws.run(&["plan", "-out", pf]).ok();
    ws.run(&["apply", pf]).code(1);
    let r = ws.run(&["apply", pf, "--allow-data-loss"]);
    r.ok();
    assert!(
        r.stdout.contains(
            "      note: drive.data is protected (protect = true): allowed by --allow-data-loss\n"
        ),
        "{}",
        r.stdout
    );
    assert_eq!(
        ws.run(&["state", "list"]).ok().stdout,
        "No resources recorded.\n"
    );
}
