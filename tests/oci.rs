//! OCI images as root filesystems, against a real registry on loopback (Debian's
//! `docker-registry`) with images built and pushed here: multi-arch indexes, whiteouts checked
//! in the built ext4 image with debugfs, htpasswd and Bearer-token auth, OCI layouts, the blob
//! cache shared between templates, moved tags in plans and saved plans, and a VM booted from
//! an image whose config gives its commands env and cwd. Bad input: `tests/oci_errors.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use common::fort::{Run, Workspace};
use common::registry::{
    debugfs, digest, gzip, one_file_image, rootfs_and_template, run, tar_layer, template_image,
    Auth, Entry, Image, Registry, LAYER_GZIP, LAYER_TAR, LAYER_ZSTD,
};
use serde_json::json;

#[test]
fn an_index_gives_linux_amd64_and_the_plan_shows_the_resolved_digest() {
    let reg = Registry::start(Auth::Anonymous);
    let amd = one_file_image("etc/arch", "amd64\n");
    let arm = one_file_image("etc/arch", "arm64\n");
    let index = reg.push_index(
        "multi",
        "v1",
        &[("linux/arm64", &arm), ("linux/amd64", &amd)],
    );
    let ws = Workspace::new();
    ws.write_manifest(&rootfs_and_template(
        &format!("{}/multi:v1", reg.host()),
        "",
    ));
    // `fort validate` stays off the network; plan resolves the tag and says to what.
    run(&ws, &["validate"]).ok();
    let plan = run(&ws, &["plan"]);
    plan.ok();
    let line = format!("image: {}/multi:v1 → {index}", reg.host());
    assert!(plan.stdout.contains(&line), "{}", plan.stdout);
    run(&ws, &["apply", "--yes"]).ok();
    let img = template_image(&ws, "t");
    assert_eq!(debugfs(&img, "cat /etc/arch").trim_end(), "amd64");
    let show: serde_json::Value = serde_json::from_str(
        &run(&ws, &["state", "show", "rootfs.app", "--json"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(show["outputs"]["digest"], json!(index));
    assert_eq!(show["outputs"]["manifest"], json!(digest(&amd.manifest())));
    assert_eq!(show["spec"]["image"]["digest"], json!(index));
    // Idempotent, and the resolution is still shown.
    let again = run(&ws, &["plan", "--detailed-exitcode"]);
    again.ok();
    assert!(again.stdout.starts_with("No changes."), "{}", again.stdout);
    assert!(
        again
            .stdout
            .contains(&format!("note: rootfs.app: {line} (unchanged)")),
        "{}",
        again.stdout
    );
}

#[test]
fn whiteouts_owners_and_xattrs_hold_in_the_built_image() {
    let reg = Registry::start(Auth::Anonymous);
    let lower = tar_layer(&[
        Entry::Dir("etc"),
        Entry::File("etc/gone", b"lower\n"),
        Entry::File("etc/kept", b"kept\n"),
        Entry::Dir("opt"),
        Entry::Dir("opt/app"),
        Entry::File("opt/app/old-1", b"old\n"),
        Entry::Dir("opt/app/sub"),
        Entry::File("opt/app/sub/deep", b"old\n"),
        Entry::Dir("srv"),
        Entry::Owned("srv/secret", b"s\n", 1000, 0o640, "yes"),
        Entry::Symlink("etc/link", "kept"),
    ]);
    let upper = tar_layer(&[
        Entry::File("etc/.wh.gone", b""),
        Entry::File("opt/app/.wh..wh..opq", b""),
        Entry::File("opt/app/new", b"upper\n"),
    ]);
    let image = Image::new(
        vec![
            (gzip(&lower), LAYER_GZIP),
            (zstd::encode_all(&upper[..], 3).unwrap(), LAYER_ZSTD),
        ],
        json!({}),
    );
    reg.push("layers", "v1", &image);
    let ws = Workspace::new();
    ws.write_manifest(&rootfs_and_template(
        &format!("{}/layers:v1", reg.host()),
        "",
    ));
    run(&ws, &["apply", "--yes"]).ok();
    let img = template_image(&ws, "t");
    // The whited-out file is gone, its sibling kept.
    assert!(
        debugfs(&img, "stat /etc/gone").contains("File not found by ext2_lookup"),
        "{}",
        debugfs(&img, "ls -l /etc")
    );
    assert_eq!(debugfs(&img, "cat /etc/kept"), "kept\n");
    // The opaque directory holds only the upper layer's files.
    let ls = debugfs(&img, "ls -p /opt/app");
    let names: Vec<&str> = ls
        .lines()
        .filter_map(|l| l.split('/').nth(5))
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .collect();
    assert_eq!(names, ["new"], "{ls}");
    assert_eq!(debugfs(&img, "cat /opt/app/new"), "upper\n");
    // Owner, mode and xattr of the lower layer's file survive.
    let stat = debugfs(&img, "stat /srv/secret");
    assert!(stat.contains("User:  1000   Group:  1000"), "{stat}");
    assert!(stat.contains("Mode:  0640"), "{stat}");
    let ea = debugfs(&img, "ea_list /srv/secret");
    assert!(ea.contains("user.fort") && ea.contains("yes"), "{ea}");
    assert!(debugfs(&img, "stat /etc/link").contains("Type: symlink"));
}

#[test]
fn htpasswd_registry_credentials_from_the_auth_file_and_the_environment() {
    let reg = Registry::start(Auth::Htpasswd);
    reg.push("private", "v1", &one_file_image("etc/who", "private\n"));
    let host = reg.host();
    let ws = Workspace::new();
    ws.write_manifest(&rootfs_and_template(&format!("{host}/private:v1"), ""));
    let denied = run(&ws, &["plan"]);
    denied.code(1);
    assert!(
        denied.stderr.contains(&format!("error: rootfs.app: registry {host} answered 401 Unauthorized for private: no credentials for {host} were found: fort looked in the manifest's auth file (not set) and $FORT_REGISTRY_AUTH (not set)")),
        "{}",
        denied.stderr
    );
    // The manifest's auth file.
    reg.auth_file(&ws.path().join("auth.json"));
    ws.write_manifest(&rootfs_and_template(
        &format!("{host}/private:v1"),
        "auth = \"auth.json\"",
    ));
    run(&ws, &["apply", "--yes"]).ok();
    assert_eq!(
        debugfs(&template_image(&ws, "t"), "cat /etc/who"),
        "private\n"
    );
    // Nothing secret was recorded.
    let state = std::fs::read(ws.state_dir().join("state.db")).unwrap();
    let text = String::from_utf8_lossy(&state);
    assert!(!text.contains(common::registry::PASSWORD));
    // A wrong password is said to be refused.
    std::fs::write(
        ws.path().join("auth.json"),
        json!({"auths": {host.clone(): {"username": common::registry::USER, "password": "nope"}}})
            .to_string(),
    )
    .unwrap();
    let refused = run(&ws, &["plan"]);
    refused.code(1);
    assert!(
        refused.stderr.contains(&format!(
            "answered 401 Unauthorized for private: the credentials for {host} from {} were refused",
            ws.path().join("auth.json").display()
        )),
        "{}",
        refused.stderr
    );
    // $FORT_REGISTRY_AUTH, without `auth` in the manifest.
    let ws2 = Workspace::new();
    ws2.write_manifest(&rootfs_and_template(&format!("{host}/private:v1"), ""));
    let env_file = ws2.path().join("docker-config.json");
    reg.auth_file(&env_file);
    let out = ws2
        .command(&["apply", "--yes"])
        .env("FORT_REGISTRY_AUTH", &env_file)
        .output()
        .unwrap();
    Run::from(out).ok();
    assert_eq!(
        debugfs(&template_image(&ws2, "t"), "cat /etc/who"),
        "private\n"
    );
}

#[test]
fn bearer_token_auth_through_the_challenges_realm() {
    let reg = Registry::start(Auth::Token);
    reg.push("team/app", "v1", &one_file_image("etc/who", "token\n"));
    let host = reg.host();
    let ws = Workspace::new();
    ws.write_manifest(&rootfs_and_template(&format!("{host}/team/app:v1"), ""));
    let denied = run(&ws, &["plan"]);
    denied.code(1);
    assert!(
        denied.stderr.contains(&format!("error: rootfs.app: registry {host} answered 401 Unauthorized for team/app: no credentials for {host} were found: fort looked in the manifest's auth file (not set) and $FORT_REGISTRY_AUTH (not set)")),
        "{}",
        denied.stderr
    );
    let refused_before = reg.tokens.refused.load(std::sync::atomic::Ordering::SeqCst);
    assert!(refused_before >= 1, "the token server was not asked");
    reg.auth_file(&ws.path().join("auth.json"));
    ws.write_manifest(&rootfs_and_template(
        &format!("{host}/team/app:v1"),
        "auth = \"auth.json\"",
    ));
    run(&ws, &["apply", "--yes"]).ok();
    assert_eq!(
        debugfs(&template_image(&ws, "t"), "cat /etc/who"),
        "token\n"
    );
    assert!(reg.tokens.granted.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // The registry itself checked the token's signature, audience and access.
    assert!(reg.blob_gets() >= 2, "{}", reg.log());
}

#[test]
fn an_oci_layout_directory_is_a_rootfs() {
    let ws = Workspace::new();
    let image = Image::new(
        vec![(
            tar_layer(&[Entry::Dir("etc"), Entry::File("etc/from", b"layout\n")]),
            LAYER_TAR,
        )],
        json!({}),
    );
    image.write_layout(&ws.path().join("layout"), "v1");
    ws.write_manifest(&rootfs_and_template("oci-layout:layout:v1", ""));
    let plan = run(&ws, &["plan"]);
    plan.ok();
    assert!(
        plan.stdout.contains(&format!(
            "image: oci-layout:{}:v1 → {}",
            ws.path().join("layout").display(),
            digest(&image.manifest())
        )),
        "{}",
        plan.stdout
    );
    run(&ws, &["apply", "--yes"]).ok();
    assert_eq!(
        debugfs(&template_image(&ws, "t"), "cat /etc/from"),
        "layout\n"
    );
    // An unknown tag lists the ones there are.
    ws.write_manifest(&rootfs_and_template("oci-layout:layout:v2", ""));
    let bad = run(&ws, &["plan"]);
    bad.code(1);
    assert!(
        bad.stderr.contains(&format!(
            "error: rootfs.app: oci-layout {} has no image tagged `v2` (tags: v1)",
            ws.path().join("layout").display()
        )),
        "{}",
        bad.stderr
    );
}

#[test]
fn a_second_template_from_the_same_layers_downloads_nothing() {
    let reg = Registry::start(Auth::Anonymous);
    let image = Image::new(
        vec![
            (
                gzip(&tar_layer(&[
                    Entry::Dir("etc"),
                    Entry::File("etc/a", b"a\n"),
                ])),
                LAYER_GZIP,
            ),
            (
                gzip(&tar_layer(&[
                    Entry::Dir("etc"),
                    Entry::File("etc/b", b"b\n"),
                ])),
                LAYER_GZIP,
            ),
        ],
        json!({"Env": ["A=1"]}),
    );
    let d = reg.push("shared", "v1", &image);
    let ws = Workspace::new();
    let first = rootfs_and_template(&format!("{}/shared:v1", reg.host()), "");
    ws.write_manifest(&first);
    run(&ws, &["apply", "--yes"]).ok();
    let gets = reg.blob_gets();
    assert_eq!(gets, 3, "2 layers and the config:\n{}", reg.log());
    // Another rootfs naming the same image by digest, and a template from it.
    ws.write_manifest(&format!(
        "{first}\n[rootfs.pinned]\nimage = \"{}/shared@{d}\"\n\n[template.t2]\nrootfs = \"pinned\"\nsize = \"48MiB\"\nguest_agent = false\n",
        reg.host()
    ));
    let apply = run(&ws, &["apply", "--yes"]);
    apply.ok();
    assert_eq!(reg.blob_gets(), gets, "no blob was downloaded again");
    assert_eq!(debugfs(&template_image(&ws, "t2"), "cat /etc/b"), "b\n");
    // Each blob is in the cache once, under its digest.
    let blobs: Vec<String> = ws
        .cache_files()
        .into_iter()
        .filter(|f| !f.contains('.'))
        .collect();
    assert_eq!(blobs.len(), 3, "{blobs:?}");
}

#[test]
fn a_moved_tag_is_a_change_in_the_plan_and_makes_a_saved_plan_stale() {
    let reg = Registry::start(Auth::Anonymous);
    let host = reg.host();
    let a = reg.push("app", "v1", &one_file_image("etc/version", "a\n"));
    let ws = Workspace::new();
    ws.write_manifest(&rootfs_and_template(&format!("{host}/app:v1"), ""));
    run(&ws, &["apply", "--yes"]).ok();
    let image_a = template_image(&ws, "t");
    // Someone pushes another image under the same tag.
    let b = reg.push("app", "v1", &one_file_image("etc/version", "b\n"));
    let plan = run(&ws, &["plan", "--detailed-exitcode"]);
    plan.code(2);
    for want in [
        "  ~ rootfs.app".to_string(),
        format!("      ~ image.digest: \"{}", &a[..40]),
        format!("      image: {host}/app:v1 → {b}"),
        "  ~ template.t".to_string(),
        format!("      ~ image_digest: \"{}", &a[..40]),
    ] {
        assert!(plan.stdout.contains(&want), "{want}\n{}", plan.stdout);
    }
    // A saved plan, then the tag moves again: applying it is refused.
    let saved = ws.path().join("saved.plan");
    run(&ws, &["plan", "-out", saved.to_str().unwrap()]).ok();
    let c = reg.push("app", "v1", &one_file_image("etc/version", "c\n"));
    let stale = run(&ws, &["apply", saved.to_str().unwrap()]);
    stale.code(1);
    assert!(
        stale.stderr.contains(&format!(
            "error: saved plan {} is stale: the tag {host}/app:v1 of rootfs.app moved ({b} → {c}) since it was made; run `fort plan -out {}` again",
            saved.display(),
            saved.display()
        )),
        "{}",
        stale.stderr
    );
    assert_eq!(template_image(&ws, "t"), image_a, "nothing was applied");
    // A fresh apply takes the tag as it is now, and builds a new image.
    run(&ws, &["apply", "--yes"]).ok();
    let image_c = template_image(&ws, "t");
    assert_ne!(image_c, image_a);
    assert_eq!(debugfs(&image_c, "cat /etc/version"), "c\n");
    assert!(!image_a.exists(), "the old image is removed");
    run(&ws, &["plan", "--detailed-exitcode"]).ok();
}

#[test]
fn a_vm_boots_from_an_image_and_its_commands_get_the_image_config() {
    use common::rootfs::static_agent;
    use common::vms::{assets, kernel_file, vmm, ConsoleOnFailure, ONE_AT_A_TIME};
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = assets();
    let agent = static_agent();
    let reg = Registry::start(Auth::Anonymous);
    // The VM tests' busybox rootfs (a .tar.gz) is the image's one layer.
    let layer = std::fs::read(dir.join("rootfs.tar.gz")).unwrap();
    let image = Image::new(
        vec![(layer, LAYER_GZIP)],
        json!({
            "Env": ["PATH=/bin:/sbin", "GREETING=hello from the image config"],
            "WorkingDir": "/srv/app",
            "User": "1234:1234",
            "Cmd": ["/bin/sh", "-c", "echo image-cmd-ran; sleep 1"],
        }),
    );
    reg.push("busybox", "vm", &image);
    let ws = Workspace::new();
    let _console = ConsoleOnFailure(ws.state_dir().join("run"));
    ws.write_manifest(&format!(
        "[kernel.deb]\nurl = \"file://{k}\"\ninitrd = {{ url = \"file://{i}\" }}\n\n\
         [rootfs.bb]\nimage = \"{host}/busybox:vm\"\n\n\
         [template.t]\nrootfs = \"bb\"\nsize = \"128MiB\"\nrun_image_cmd = true\n\n\
         [vm.a]\nvmm = \"{vmm}\"\nkernel = \"deb\"\nroot = {{ template = \"t\", size = \"256MiB\" }}\nmemory = \"192MiB\"\n",
        k = dir.join(kernel_file()).display(),
        i = dir.join("initrd.cpio.gz").display(),
        host = reg.host(),
        vmm = vmm(),
    ));
    let apply = ws
        .command(&["apply", "--yes"])
        .env("FORT_GUEST_AGENT", &agent)
        .output()
        .unwrap();
    Run::from(apply).ok();
    let exec = |args: &[&str]| {
        let mut a = vec!["exec", "vm.a"];
        a.extend_from_slice(args);
        run(&ws, &a)
    };
    // Env, WorkingDir and User of the image config are the defaults…
    let r = exec(&["--", "sh", "-c", "echo \"$GREETING\"; pwd"]);
    assert_eq!(r.ok().stdout, "hello from the image config\n/srv/app\n");
    // …and explicit arguments win.
    let r = exec(&[
        "--cwd",
        "/tmp",
        "--env",
        "GREETING=mine",
        "--",
        "sh",
        "-c",
        "echo \"$GREETING\"; pwd",
    ]);
    assert_eq!(r.ok().stdout, "mine\n/tmp\n");
    // User too (a uid the guest's /etc/passwd does not know), unless the call names another.
    assert_eq!(exec(&["--", "id", "-u"]).ok().stdout, "1234\n");
    assert_eq!(
        exec(&["--user", "root", "--", "id", "-u"]).ok().stdout,
        "0\n"
    );
    let r = exec(&["--", "cat", "/etc/fort/image.json"]);
    assert!(
        r.ok().stdout.contains("\"run_image_cmd\": true"),
        "{}",
        r.stdout
    );
    // run_image_cmd: the image's Cmd runs as a service, restarted when it exits, on the console.
    let console = ws.state_dir().join("run/a/console.log");
    let t = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        let runs = text.matches("image-cmd-ran").count();
        let restarts = text
            .matches("fort-guest-agent: image command exit status: 0; restarting in")
            .count();
        if runs >= 2 && restarts >= 1 {
            break;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "the image command did not run twice:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    run(&ws, &["destroy", "--yes"]).ok();
}
