//! What `init = "distro"` adds to an image: fort's guest agent as a service of the image's own
//! init (a systemd unit, an OpenRC service, an inittab `respawn` line), and the files that tell
//! the distro's network tools to leave eth0 to the agent. Pure: it returns the files to write.

use super::init::InitKind;

/// Where the agent goes in distro mode (`/sbin/init` stays the distro's).
pub const AGENT_PATH: &str = "/usr/local/sbin/fort-guest-agent";

/// A file or symlink to put into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Install {
    File {
        path: String,
        text: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// A directory, made only if missing.
    Dir {
        path: String,
        mode: u32,
    },
}

/// The parts of the unpacked image the generated files depend on.
#[derive(Debug, Default, Clone)]
pub struct Existing {
    /// `/etc/inittab` (busybox init), if the image has one.
    pub inittab: Option<String>,
    /// `/etc/network/interfaces` (ifupdown, also read by busybox `ifup` and Alpine), if any.
    pub interfaces: Option<String>,
}

/// systemd: started before network-pre.target (so networkd and ifupdown find eth0 already
/// configured), without the default dependencies on sysinit/basic (as early as possible: only
/// after the root filesystem has its fstab options — the initrd mounted it read-write — not
/// after local-fs.target, which under TCG waits ~16 s for udev to announce the root disk),
/// restarted if it dies, stopped only by the shutdown itself.
pub fn systemd_unit() -> String {
    format!(
        "# Installed by fort (template init = \"distro\"): fort's guest agent, MCP over vsock.\n\
         [Unit]\n\
         Description=fort guest agent (MCP over vsock port 52)\n\
         DefaultDependencies=no\n\
         After=systemd-remount-fs.service\n\
         Before=network-pre.target shutdown.target\n\
         Wants=network-pre.target\n\
         Conflicts=shutdown.target\n\
         \n\
         [Service]\n\
         ExecStart={AGENT_PATH} --service systemd\n\
         Restart=always\n\
         RestartSec=1\n\
         StandardOutput=journal+console\n\
         StandardError=journal+console\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// OpenRC: supervised (respawned), before the network service.
pub fn openrc_service() -> String {
    format!(
        "#!/sbin/openrc-run\n\
         # Installed by fort (template init = \"distro\"): fort's guest agent, MCP over vsock.\n\
         description=\"fort guest agent (MCP over vsock port 52)\"\n\
         supervisor=supervise-daemon\n\
         command={AGENT_PATH}\n\
         command_args=\"--service openrc\"\n\
         respawn_delay=1\n\
         respawn_max=0\n\
         output_log=/dev/console\n\
         error_log=/dev/console\n\
         \n\
         depend() {{\n\
         \tbefore net networking\n\
         }}\n"
    )
}

/// The line busybox init respawns the agent with.
pub fn inittab_line() -> String {
    format!("::respawn:{AGENT_PATH} --service busybox")
}

/// The image's inittab with the agent's line added (once). Without an inittab, busybox init
/// uses a built-in table; writing one replaces it, so the same defaults are written along.
pub fn inittab(existing: Option<&str>) -> String {
    let mut out = match existing {
        Some(t) => t
            .lines()
            .filter(|l| !l.contains(AGENT_PATH))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
        None => "# busybox init's defaults (the image had no /etc/inittab)\n\
                 ::sysinit:/etc/init.d/rcS\n\
                 ::ctrlaltdel:/sbin/reboot\n\
                 ::shutdown:/bin/umount -a -r\n\
                 ::restart:/sbin/init\n"
            .to_string(),
    };
    out.push_str("# fort's guest agent (template init = \"distro\")\n");
    out.push_str(&inittab_line());
    out.push('\n');
    out
}

/// systemd-networkd: eth0 is the agent's (it is configured from `fort.*` kernel parameters).
pub const NETWORKD_UNMANAGED: &str =
    "# Installed by fort: fort-guest-agent configures eth0 from the fort.* kernel parameters.\n\
[Match]\n\
Name=eth0\n\
\n\
[Link]\n\
Unmanaged=yes\n";

/// `/etc/network/interfaces` without its eth0 stanzas (commented out, so the edit is visible):
/// `auto`/`allow-*` lines naming eth0 lose that name, `iface eth0 …` and its indented options
/// are commented. None when there is nothing to change.
pub fn interfaces_without_eth0(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut in_eth0 = false;
    let mut changed = false;
    for line in text.lines() {
        let t = line.trim_start();
        let words: Vec<&str> = t.split_whitespace().collect();
        let first = words.first().copied().unwrap_or_default();
        let stanza = matches!(
            first,
            "iface" | "mapping" | "auto" | "source" | "source-directory"
        ) || first.starts_with("allow-");
        if stanza {
            in_eth0 = false;
        }
        if first == "iface" && words.get(1) == Some(&"eth0") {
            in_eth0 = true;
        }
        if (first == "auto" || first.starts_with("allow-")) && words.contains(&"eth0") {
            let rest: Vec<&str> = words[1..]
                .iter()
                .copied()
                .filter(|w| *w != "eth0")
                .collect();
            out.push_str(&format!(
                "# fort: eth0 is configured by fort-guest-agent: {line}\n"
            ));
            if !rest.is_empty() {
                out.push_str(&format!("{first} {}\n", rest.join(" ")));
            }
            changed = true;
            continue;
        }
        if in_eth0 && !t.is_empty() && !t.starts_with('#') {
            out.push_str(&format!(
                "# fort: eth0 is configured by fort-guest-agent: {line}\n"
            ));
            changed = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    changed.then_some(out)
}

/// Everything `init = "distro"` writes for `kind` (the agent binary itself aside).
pub fn installs(kind: InitKind, existing: &Existing) -> Vec<Install> {
    let file = |path: &str, text: String, mode| Install::File {
        path: path.to_string(),
        text,
        mode,
    };
    let mut out = match kind {
        InitKind::Systemd => vec![
            file(
                "/etc/systemd/system/fort-guest-agent.service",
                systemd_unit(),
                0o644,
            ),
            Install::Symlink {
                path: "/etc/systemd/system/multi-user.target.wants/fort-guest-agent.service"
                    .to_string(),
                target: "/etc/systemd/system/fort-guest-agent.service".to_string(),
            },
            // Images made for containers ship an empty /etc/machine-id, which is a first
            // boot to systemd: systemd-firstboot would prompt for a locale and a root
            // password on a console nobody types on, and the boot would wait forever.
            Install::Symlink {
                path: "/etc/systemd/system/systemd-firstboot.service".to_string(),
                target: "/dev/null".to_string(),
            },
        ],
        InitKind::Openrc => vec![
            file("/etc/init.d/fort-guest-agent", openrc_service(), 0o755),
            Install::Symlink {
                path: "/etc/runlevels/default/fort-guest-agent".to_string(),
                target: "/etc/init.d/fort-guest-agent".to_string(),
            },
        ],
        InitKind::Busybox => vec![file(
            "/etc/inittab",
            inittab(existing.inittab.as_deref()),
            0o644,
        )],
    };
    // The initrd moves /proc, /sys and /dev into the image before it starts its init, and no
    // init works without them: a tarball may lack the empty directories (fort's agent makes
    // them itself as PID 1).
    for (path, mode) in [
        ("/proc", 0o555),
        ("/sys", 0o555),
        ("/dev", 0o755),
        ("/run", 0o755),
        ("/tmp", 0o1777),
    ] {
        out.push(Install::Dir {
            path: path.to_string(),
            mode,
        });
    }
    // Written for every kind: an image may carry networkd or udev even if its init is not
    // systemd. udev would rename eth0 by its predictable-names policy (ens3, enp0s3) — only a
    // race with the agent bringing it up first keeps the name otherwise — so that policy is
    // masked (the documented way: 99-default.link → /dev/null).
    out.push(Install::Symlink {
        path: "/etc/systemd/network/99-default.link".to_string(),
        target: "/dev/null".to_string(),
    });
    out.push(file(
        "/etc/systemd/network/00-fort-eth0.network",
        NETWORKD_UNMANAGED.to_string(),
        0o644,
    ));
    if let Some(t) = existing
        .interfaces
        .as_deref()
        .and_then(interfaces_without_eth0)
    {
        out.push(file("/etc/network/interfaces", t, 0o644));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_service_files() {
        assert_eq!(
            systemd_unit(),
            "# Installed by fort (template init = \"distro\"): fort's guest agent, MCP over vsock.\n\
             [Unit]\nDescription=fort guest agent (MCP over vsock port 52)\nDefaultDependencies=no\n\
             After=systemd-remount-fs.service\nBefore=network-pre.target shutdown.target\nWants=network-pre.target\n\
             Conflicts=shutdown.target\n\n[Service]\nExecStart=/usr/local/sbin/fort-guest-agent --service systemd\n\
             Restart=always\nRestartSec=1\nStandardOutput=journal+console\nStandardError=journal+console\n\n\
             [Install]\nWantedBy=multi-user.target\n"
        );
        assert_eq!(
            openrc_service(),
            "#!/sbin/openrc-run\n# Installed by fort (template init = \"distro\"): fort's guest agent, MCP over vsock.\n\
             description=\"fort guest agent (MCP over vsock port 52)\"\nsupervisor=supervise-daemon\n\
             command=/usr/local/sbin/fort-guest-agent\ncommand_args=\"--service openrc\"\nrespawn_delay=1\n\
             respawn_max=0\noutput_log=/dev/console\nerror_log=/dev/console\n\ndepend() {\n\tbefore net networking\n}\n"
        );
        let line = "# fort's guest agent (template init = \"distro\")\n::respawn:/usr/local/sbin/fort-guest-agent --service busybox\n";
        let cases: Vec<(Option<&str>, String)> = vec![
            (Some("::sysinit:/etc/init.d/rcS\n"), format!("::sysinit:/etc/init.d/rcS\n{line}")),
            // A rebuilt inittab never gets the line twice.
            (Some("::sysinit:/bin/true\n::respawn:/usr/local/sbin/fort-guest-agent --service busybox\n"),
             format!("::sysinit:/bin/true\n{line}")),
            (None, format!("# busybox init's defaults (the image had no /etc/inittab)\n::sysinit:/etc/init.d/rcS\n::ctrlaltdel:/sbin/reboot\n::shutdown:/bin/umount -a -r\n::restart:/sbin/init\n{line}")),
        ];
        for (existing, want) in cases {
            assert_eq!(inittab(existing), want, "{existing:?}");
        }
    }

    #[test]
    fn ifupdown_leaves_eth0_alone() {
        let c = "# fort: eth0 is configured by fort-guest-agent: ";
        let cases: Vec<(&str, Option<String>)> = vec![
            ("auto lo\niface lo inet loopback\n", None),
            (
                "auto lo eth0\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n    hostname x\n\nsource /etc/network/interfaces.d/*\n",
                Some(format!("{c}auto lo eth0\nauto lo\niface lo inet loopback\n\n{c}allow-hotplug eth0\n{c}iface eth0 inet dhcp\n{c}    hostname x\n\nsource /etc/network/interfaces.d/*\n")),
            ),
            ("iface eth1 inet dhcp\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(interfaces_without_eth0(text), want, "{text}");
        }
    }

    #[test]
    fn what_each_init_gets() {
        let paths = |kind| {
            installs(kind, &Existing::default())
                .into_iter()
                .map(|i| match i {
                    Install::File { path, .. } => format!("file {path}"),
                    Install::Symlink { path, target } => format!("link {path} -> {target}"),
                    Install::Dir { path, .. } => format!("dir {path}"),
                })
                .collect::<Vec<_>>()
        };
        let common = [
            "dir /proc",
            "dir /sys",
            "dir /dev",
            "dir /run",
            "dir /tmp",
            "link /etc/systemd/network/99-default.link -> /dev/null",
            "file /etc/systemd/network/00-fort-eth0.network",
        ];
        let with = |v: &[&str]| {
            v.iter()
                .chain(common.iter())
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            paths(InitKind::Systemd),
            with(&["file /etc/systemd/system/fort-guest-agent.service", "link /etc/systemd/system/multi-user.target.wants/fort-guest-agent.service -> /etc/systemd/system/fort-guest-agent.service", "link /etc/systemd/system/systemd-firstboot.service -> /dev/null"])
        );
        assert_eq!(
            paths(InitKind::Openrc),
            with(&[
                "file /etc/init.d/fort-guest-agent",
                "link /etc/runlevels/default/fort-guest-agent -> /etc/init.d/fort-guest-agent"
            ])
        );
        assert_eq!(paths(InitKind::Busybox), with(&["file /etc/inittab"]));
    }
}
