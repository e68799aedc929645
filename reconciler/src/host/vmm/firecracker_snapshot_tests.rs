//! The snapshot requests against golden bodies written from Firecracker's documentation
//! (docs/snapshotting/snapshot-support.md, network-for-clones.md, the swagger), the HTTP
//! client against a stand-in server on a unix socket, the restore command lines, and the
//! snapshot files' handling.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn golden(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .join(name);
    std::fs::read_to_string(&p).unwrap()
}

fn as_golden(r: &ApiRequest) -> Value {
    json!({"method": r.method, "path": r.path, "body": r.body})
}

#[test]
fn the_requests_are_the_documented_ones() {
    let j = SnapshotFiles::jailed();
    for (name, req) in [
        ("firecracker-snapshot-pause.json", pause()),
        ("firecracker-snapshot-resume.json", resume()),
        ("firecracker-snapshot-create.json", create(&j.state, &j.mem)),
        (
            "firecracker-snapshot-load.json",
            load(&j.state, &j.mem, false, &[]),
        ),
        (
            "firecracker-snapshot-load-overrides.json",
            load(&j.state, &j.mem, true, &[("eth0".into(), "fort-b".into())]),
        ),
    ] {
        let want: Value = serde_json::from_str(&golden(name)).unwrap();
        assert_eq!(as_golden(&req), want, "{name}");
    }
}

/// A stand-in for Firecracker's API server: one connection per answer, each read as one
/// request (head and `Content-Length` body) and answered with it; `None` never answers. A
/// connection closed without a request (a probe) is not one. Returns the requests' bytes.
pub(crate) async fn serve(
    sock: &Path,
    answers: Vec<Option<&'static str>>,
) -> tokio::task::JoinHandle<Vec<String>> {
    serve_with(sock, answers, |_| {}).await
}

/// [`serve`], calling `act` with each request before answering it (what Firecracker does
/// besides answering, e.g. writing the snapshot files).
pub(crate) async fn serve_with(
    sock: &Path,
    answers: Vec<Option<&'static str>>,
    act: impl Fn(&str) + Send + 'static,
) -> tokio::task::JoinHandle<Vec<String>> {
    let l = tokio::net::UnixListener::bind(sock).unwrap();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut answers = answers.into_iter();
        while answers.len() > 0 {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            loop {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .map(|v| v.parse().unwrap())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            if buf.is_empty() {
                continue;
            }
            let req = String::from_utf8(buf).unwrap();
            act(&req);
            seen.push(req);
            match answers.next().unwrap() {
                Some(a) => s.write_all(a.as_bytes()).await.unwrap(),
                None => tokio::time::sleep(Duration::from_secs(5)).await,
            }
        }
        seen
    })
}

pub(crate) const NO_CONTENT: &str =
    "HTTP/1.1 204 No Content\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n";
pub(crate) const CORRUPTED: &str = "HTTP/1.1 400 Bad Request\r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: 46\r\n\r\n{\"fault_message\":\"Snapshot file is corrupted\"}";

#[tokio::test]
async fn call_sends_the_exact_request_and_reports_firecrackers_fault() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("api.sock");
    let body = CORRUPTED.split_once("\r\n\r\n").unwrap().1;
    assert!(CORRUPTED.contains(&format!("Content-Length: {}\r\n", body.len())));
    let server = serve(&sock, vec![Some(NO_CONTENT), Some(CORRUPTED)]).await;
    let long = Duration::from_secs(5);
    call(&sock, &pause(), long).await.unwrap();
    let j = SnapshotFiles::jailed();
    let err = call(&sock, &load(&j.state, &j.mem, true, &[]), long)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Firecracker refused PUT /snapshot/load: Snapshot file is corrupted (HTTP 400)"
    );
    let seen = server.await.unwrap();
    assert_eq!(
        seen[0],
        "PATCH /vm HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\r\n{\"state\":\"Paused\"}"
    );
    let (head, body) = seen[1].split_once("\r\n\r\n").unwrap();
    assert_eq!(
        head,
        format!("PUT /snapshot/load HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}", body.len())
    );
    let sent: Value = serde_json::from_str(body).unwrap();
    assert_eq!(sent, load(&j.state, &j.mem, true, &[]).body);
}

/// An answer with a JSON body, as Firecracker's API server writes one (leaked: the stand-in
/// server takes `'static` answers).
pub(crate) fn ok_json(body: &str) -> &'static str {
    let a = format!(
        "HTTP/1.1 200 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    Box::leak(a.into_boxed_str())
}

/// swagger `InstanceInfo` (app_name, id, state, vmm_version) in `state`.
pub(crate) fn instance(state: &str) -> &'static str {
    ok_json(&format!(
        r#"{{"app_name":"Firecracker","id":"anonymous-instance","state":"{state}","vmm_version":"1.12.0"}}"#
    ))
}

#[tokio::test]
async fn get_sends_no_body_and_reads_the_instance_state() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("api.sock");
    let states = ["Paused", "Running", "Not started"];
    let mut answers: Vec<_> = states.iter().map(|s| Some(instance(s))).collect();
    answers.push(Some(ok_json(r#"{"id":"vm-a"}"#)));
    let server = serve(&sock, answers).await;
    let long = Duration::from_secs(5);
    for want in states {
        assert_eq!(instance_state(&sock, long).await.unwrap(), want);
    }
    assert_eq!(
        instance_state(&sock, long).await.unwrap_err().to_string(),
        r#"Firecracker answered GET / without a state: {"id":"vm-a"}"#
    );
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 4);
    assert_eq!(
        seen[0],
        "GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n"
    );
}

#[tokio::test]
async fn call_gives_up_after_its_timeout_and_names_a_missing_socket() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("api.sock");
    let err = call(&sock, &pause(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot connect to Firecracker's API socket {}",
            sock.display()
        )
    );
    let _server = serve(&sock, vec![None]).await;
    let err = call(&sock, &resume(), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Firecracker did not answer PATCH /vm within 200ms"
    );
}

#[tokio::test]
async fn suspend_pauses_then_snapshots_and_resumes_when_the_snapshot_fails() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("api.sock");
    let j = SnapshotFiles::jailed();
    let server = serve(&sock, vec![Some(NO_CONTENT), Some(NO_CONTENT)]).await;
    suspend(&sock, &j.state, &j.mem, Duration::from_secs(5))
        .await
        .unwrap();
    let seen = server.await.unwrap();
    assert!(seen[0].starts_with("PATCH /vm "), "{}", seen[0]);
    assert!(seen[0].ends_with(r#"{"state":"Paused"}"#));
    assert!(seen[1].starts_with("PUT /snapshot/create "), "{}", seen[1]);

    std::fs::remove_file(&sock).unwrap();
    let refused = "HTTP/1.1 400 Bad Request\r\nContent-Length: 33\r\n\r\n{\"fault_message\":\"No space left\"}";
    let server = serve(
        &sock,
        vec![Some(NO_CONTENT), Some(refused), Some(NO_CONTENT)],
    )
    .await;
    let err = suspend(&sock, &j.state, &j.mem, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Firecracker refused PUT /snapshot/create: No space left (HTTP 400)"
    );
    let seen = server.await.unwrap();
    assert!(seen[2].ends_with(r#"{"state":"Resumed"}"#), "{}", seen[2]);
}

#[tokio::test]
async fn restore_waits_for_the_socket_then_loads_and_resumes() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("api.sock");
    let j = SnapshotFiles::jailed();
    let err = restore(
        &sock,
        &j.state,
        &j.mem,
        &[],
        true,
        Duration::from_millis(100),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "Firecracker's API socket {} did not appear within 100ms",
            sock.display()
        )
    );
    // The socket appears a little after the process starts; the probe's connection is the
    // first the server sees.
    let (s2, overrides) = (
        sock.clone(),
        vec![("eth0".to_string(), "fort-b".to_string())],
    );
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        serve(&s2, vec![Some(NO_CONTENT)]).await.await.unwrap()
    });
    restore(
        &sock,
        &j.state,
        &j.mem,
        &overrides,
        true,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let seen = late.await.unwrap();
    assert_eq!(seen.len(), 1);
    let body: Value = serde_json::from_str(seen[0].split_once("\r\n\r\n").unwrap().1).unwrap();
    let want: Value =
        serde_json::from_str(&golden("firecracker-snapshot-load-overrides.json")).unwrap();
    assert_eq!(body, want["body"]);
}

#[test]
fn the_restore_command_lines_are_the_boots_without_a_config() {
    let g = golden("firecracker-restore-args.txt");
    let mut sections: Vec<Vec<String>> = Vec::new();
    for l in g.lines() {
        if l.starts_with("# plain") || l.starts_with("# jailer") {
            sections.push(Vec::new());
        } else if !l.starts_with('#') {
            sections.last_mut().unwrap().push(l.to_string());
        }
    }
    let c = crate::host::vmm::firecracker::tests::cfg();
    assert_eq!(restore_args(&c.run_dir), sections[0]);
    let jail = jailer::layout(&c);
    let confine = jailer::tests::confine;
    assert_eq!(jailed_restore_args(&jail, &confine(1)), sections[1]);
    assert_eq!(jailed_restore_args(&jail, &confine(2)), sections[2]);
    // Exactly the boot's arguments without `--config-file /config.json`.
    let boot = jailer::args(&jail, &confine(2));
    let i = boot.iter().position(|a| a == "--config-file").unwrap();
    let mut without = boot.clone();
    without.drain(i..i + 2);
    assert_eq!(jailed_restore_args(&jail, &confine(2)), without);
}

#[test]
fn snapshot_files_are_linked_into_the_jail_and_committed_whole() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let t = tempfile::tempdir().unwrap();
    let mut c = crate::host::vmm::firecracker::tests::cfg();
    c.run_dir = t.path().join("run/a");
    let jail = jailer::layout(&c);
    std::fs::create_dir_all(&jail.root).unwrap();
    let tmp = t.path().join("snapshots/.a.tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let files = SnapshotFiles::in_dir(&tmp);
    // SAFETY: getuid/getgid have no preconditions.
    let me = unsafe { (libc::getuid(), libc::getgid()) };
    precreate(&files, Some(me)).unwrap();
    let m = std::fs::metadata(&files.mem).unwrap();
    assert_eq!((m.len(), m.permissions().mode() & 0o777), (0, 0o600));
    let inside = link_into_jail(&jail.root, &files).unwrap();
    assert_eq!(inside, SnapshotFiles::in_dir(Path::new("/")));
    assert_eq!(inside.state, Path::new("/snapshot.bin"));
    // What Firecracker writes at /mem.bin in its chroot is fort's file.
    std::fs::write(jail.root.join("mem.bin"), b"guest memory").unwrap();
    assert_eq!(std::fs::read(&files.mem).unwrap(), b"guest memory");
    assert_eq!(
        std::fs::metadata(jail.root.join("snapshot.bin"))
            .unwrap()
            .ino(),
        std::fs::metadata(&files.state).unwrap().ino()
    );
    record_version(&tmp, "Firecracker v1.12.0\n").unwrap();
    let dest = t.path().join("snapshots/a");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("stale"), b"").unwrap();
    commit(&tmp, &dest).unwrap();
    assert!(!tmp.exists());
    assert!(!dest.join("stale").exists());
    assert!(!t.path().join("snapshots/a.old").exists());
    assert_eq!(std::fs::read(dest.join(MEM_FILE)).unwrap(), b"guest memory");
    check_version(&dest, "Firecracker v1.12.0").unwrap();
    assert_eq!(
        check_version(&dest, "Firecracker v1.13.0").unwrap_err().to_string(),
        format!(
            "the snapshot in {} was made by Firecracker v1.12.0, not Firecracker v1.13.0: restore it with that Firecracker or discard it",
            dest.display()
        )
    );
    fsync_tree(&dest).unwrap();
}
