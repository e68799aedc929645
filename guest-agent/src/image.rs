//! The OCI image config a template built from an image wrote to `/etc/fort/image.json`:
//! its `Env`, `WorkingDir` and `User` are the defaults of `run_command` (explicit arguments
//! win), and with `run_image_cmd` its `Entrypoint` + `Cmd` run as a service the agent
//! supervises (restarted with backoff whenever it exits, its output on the console).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Where templates write the image config (`FORT_IMAGE_CONFIG` overrides it, for tests).
pub const PATH: &str = "/etc/fort/image.json";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ImageConfig {
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub run_image_cmd: bool,
}

impl ImageConfig {
    /// `Env` as pairs (entries without `=` are skipped).
    pub fn env_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env.iter().filter_map(|kv| kv.split_once('='))
    }

    /// Entrypoint followed by Cmd, as a container runtime runs them.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("fort-guest-agent: {msg}");
}

/// The image config, read once (none when the image was not built from an OCI image).
pub fn get() -> Option<&'static ImageConfig> {
    static CONFIG: OnceLock<Option<ImageConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let path = std::env::var_os("FORT_IMAGE_CONFIG")
                .map_or_else(|| PathBuf::from(PATH), PathBuf::from);
            let text = std::fs::read_to_string(&path).ok()?;
            match serde_json::from_str(&text) {
                Ok(c) => Some(c),
                Err(e) => {
                    log(format!("ignoring {}: {e}", path.display()));
                    None
                }
            }
        })
        .as_ref()
}

/// Who a command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// `User` of an image config (`name`, `uid`, `name:group`, `uid:gid`), resolved against the
/// guest's `/etc/passwd` and `/etc/group` texts.
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<Identity, String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    // name:x:uid:gid:gecos:home:shell
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && (f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user)));
    let (uid, mut gid, home) = match (&entry, user.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse::<u32>()
                .map_err(|_| format!("user `{user}` has a bad uid in /etc/passwd"))?,
            f[3].parse::<u32>().unwrap_or(0),
            f.get(5)
                .filter(|h| !h.is_empty())
                .map_or("/", |h| *h)
                .to_string(),
        ),
        (None, Ok(uid)) => (uid, 0, "/".to_string()),
        (None, Err(_)) => return Err(format!("user `{user}` is not in /etc/passwd")),
    };
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("group `{g}` is not in /etc/group"))?,
        };
    }
    Ok(Identity { uid, gid, home })
}

/// Resolve `spec` against this system's files.
pub fn identity(spec: &str) -> Result<Identity, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    resolve_user(spec, &passwd, &group)
}

/// Run the image's command for as long as the agent runs: restarted 1 s after it exits,
/// doubling up to 30 s while it keeps failing fast; output goes to the console.
pub async fn supervise(cfg: &'static ImageConfig) {
    let argv = cfg.argv();
    let Some((program, args)) = argv.split_first() else {
        log("run_image_cmd: the image has no Entrypoint or Cmd");
        return;
    };
    let mut delay = Duration::from_secs(1);
    loop {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(cfg.working_dir.as_deref().unwrap_or("/"))
            .envs(cfg.env_pairs())
            .stdin(std::process::Stdio::null());
        if let Some(u) = &cfg.user {
            match identity(u) {
                Ok(id) => {
                    cmd.uid(id.uid).gid(id.gid);
                    if !cfg.env_pairs().any(|(k, _)| k == "HOME") {
                        cmd.env("HOME", id.home);
                    }
                }
                Err(e) => log(format!("image command: {e}; running it as root")),
            }
        }
        let started = Instant::now();
        let spawned = {
            let mut own = crate::init::OWN_CHILDREN.lock().ok();
            let c = cmd.spawn();
            if let (Ok(c), Some(Some(set))) = (&c, own.as_mut().map(|g| g.as_mut())) {
                if let Some(pid) = c.id() {
                    set.insert(pid);
                }
            }
            c
        };
        match spawned {
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                log(format!("image command {argv:?} started (pid {pid})"));
                let status = child.wait().await;
                if let Ok(mut own) = crate::init::OWN_CHILDREN.lock() {
                    if let Some(set) = own.as_mut() {
                        set.remove(&pid);
                    }
                }
                let how = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("could not be waited for: {e}"),
                };
                if started.elapsed() > Duration::from_secs(10) {
                    delay = Duration::from_secs(1);
                }
                log(format!(
                    "image command {how}; restarting in {}s",
                    delay.as_secs()
                ));
            }
            Err(e) => log(format!(
                "image command {argv:?} cannot start: {e}; retrying in {}s",
                delay.as_secs()
            )),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        let passwd =
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\nnohome:x:7:7::::\n";
        let group = "root:x:0:\nstaff:x:50:app\n";
        let id = |uid, gid, home: &str| {
            Ok(Identity {
                uid,
                gid,
                home: home.to_string(),
            })
        };
        assert_eq!(
            resolve_user("app", passwd, group),
            id(1000, 1001, "/home/app")
        );
        assert_eq!(
            resolve_user("1000", passwd, group),
            id(1000, 1001, "/home/app")
        );
        assert_eq!(
            resolve_user("app:staff", passwd, group),
            id(1000, 50, "/home/app")
        );
        assert_eq!(
            resolve_user("4242:4343", passwd, group),
            id(4242, 4343, "/")
        );
        assert_eq!(resolve_user("nohome", passwd, group), id(7, 7, "/"));
        assert_eq!(
            resolve_user("bob", passwd, group),
            Err("user `bob` is not in /etc/passwd".to_string())
        );
        assert_eq!(
            resolve_user("app:wheel", passwd, group),
            Err("group `wheel` is not in /etc/group".to_string())
        );
    }
}
