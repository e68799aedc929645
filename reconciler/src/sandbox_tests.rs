use std::collections::BTreeSet;
use std::path::PathBuf;

use super::*;
use crate::manifest::Origin;

fn shape() -> SandboxShape {
    SandboxShape {
        vmm: Vmm::Qemu,
        kernel: "k".into(),
        template: "t".into(),
        size: 256 << 20,
        vcpus: 1,
        memory: 256 << 20,
        network: Some("n".into()),
        ttl: 3600,
        max_ttl: 7200,
        idle_timeout: Some(600),
        max_instances: Some(2),
        origin: Origin {
            file: PathBuf::from("fort.toml"),
            line: 1,
            column: 1,
        },
    }
}

fn instance(created: u64, expires: u64, idle: Option<u64>) -> Instance {
    Instance {
        vm: "ci-0001".into(),
        sandbox: "ci".into(),
        created,
        expires,
        idle_timeout: idle,
        file: PathBuf::from("/s/ci-0001.toml"),
    }
}

#[test]
fn ttl_is_the_shapes_default_or_what_was_asked_up_to_max_ttl() {
    let s = shape();
    let cases: &[(Option<&str>, Result<u64, SandboxError>)] = &[
        (None, Ok(3600)),
        (Some("20s"), Ok(20)),
        (Some("2h"), Ok(7200)),
        (
            Some("3h"),
            Err(SandboxError::TtlTooLong {
                template: "ci".into(),
                ttl: "3h".into(),
                max: "2h".into(),
            }),
        ),
        (
            Some("soon"),
            Err(SandboxError::BadTtl(
                "`soon` is not a duration such as \"30s\", \"15m\" or \"2h\" (expected number at 0)"
                    .into(),
            )),
        ),
    ];
    for (asked, want) in cases {
        assert_eq!(&ttl("ci", &s, *asked), want, "{asked:?}");
    }
    assert_eq!(
        ttl("ci", &s, Some("3h")).unwrap_err().to_string(),
        "ttl 3h is longer than sandbox.ci's max_ttl (2h)"
    );
}

#[test]
fn expiry_by_ttl_and_by_idle_time() {
    let created = 1_800_000_000;
    let i = instance(created, created + 100, Some(30));
    assert_eq!(expired(&i, created + 10, None), None);
    assert_eq!(
        expired(&i, created + 30, None).as_deref(),
        Some("idle: no agent request for 30s (idle_timeout 30s; last at 2027-01-15T08:00:00Z)")
    );
    // Activity pushes the idle deadline, never the ttl.
    assert_eq!(expired(&i, created + 40, Some(created + 20)), None);
    assert_eq!(
        expired(&i, created + 100, Some(created + 99)).as_deref(),
        Some("its ttl ran out at 2027-01-15T08:01:40Z (made 2027-01-15T08:00:00Z)")
    );
    let no_idle = instance(created, created + 100, None);
    assert_eq!(expired(&no_idle, created + 99, None), None);
    assert_eq!(
        next_due([&i, &no_idle].into_iter(), &|_| Some(created + 50)),
        Some(created + 80)
    );
}

#[test]
fn names_are_template_dash_four_hex_digits_not_taken() {
    let taken: BTreeSet<String> = ["ci-0001".to_string(), "ci-0002-root".to_string()].into();
    let mut n = 0u16;
    let name = pick_name("ci", &taken, || {
        n += 1;
        n
    });
    assert_eq!(name, "ci-0003");
}

#[test]
fn file_text_round_trips_and_extend_changes_only_expires() {
    let t = file_text("ci-00ab", "ci", &shape(), 1_800_000_000, 1_800_003_600);
    assert_eq!(
        t,
        "# A sandbox made by fort from [sandbox.ci] (docs/sandboxes.md). fort rewrites\n\
         # this file on sandbox_extend and removes it when the sandbox expires or is destroyed;\n\
         # removing it by hand destroys the sandbox on the next pass.\n\
         [instance]\n\
         sandbox = \"ci\"\n\
         created = \"2027-01-15T08:00:00Z\"\n\
         expires = \"2027-01-15T09:00:00Z\"\n\
         idle_timeout = \"10m\"\n\
         \n\
         [vm.ci-00ab]\n\
         vmm = \"qemu\"\n\
         kernel = \"k\"\n\
         root = { template = \"t\", size = \"256MiB\" }\n\
         vcpus = 1\n\
         memory = \"256MiB\"\n\
         network = \"n\"\n\
         restart = \"never\"\n"
    );
    let e = with_expiry(&t, 1_800_007_200);
    assert_eq!(e, t.replace("2027-01-15T09:00:00Z", "2027-01-15T10:00:00Z"));
}
