//! On-demand sandboxes, the pure part (docs/sandboxes.md): the text of an instance's file,
//! its name, TTL checks against its `[sandbox.NAME]`, and when it expires.

use std::collections::BTreeSet;

use crate::manifest::units::format_size;
use crate::manifest::{Instance, Manifest, SandboxShape, Vmm};

pub use crate::manifest::sandbox_limits::{human, parse_secs, MAX_NAME_WITH_NETWORK};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SandboxError {
    #[error("unknown sandbox template `{name}`: {known}")]
    UnknownTemplate { name: String, known: String },
    #[error("ttl: {0}")]
    BadTtl(String),
    #[error("ttl {ttl} is longer than sandbox.{template}'s max_ttl ({max})")]
    TtlTooLong {
        template: String,
        ttl: String,
        max: String,
    },
    #[error("sandbox.{template} has {count} instances (max_instances = {max}): destroy one first")]
    MaxInstances {
        template: String,
        count: usize,
        max: u32,
    },
    #[error("name `{name}`: {reason}")]
    BadName { name: String, reason: String },
    #[error("no sandbox `{0}`: sandbox_list shows the sandboxes there are (it may have expired)")]
    Unknown(String),
}

/// What the manifest offers: `the manifest declares sandbox.a, sandbox.b`.
fn known(m: &Manifest) -> String {
    if m.sandboxes.is_empty() {
        return "the manifest declares no [sandbox.NAME]".to_string();
    }
    let names: Vec<String> = m.sandboxes.keys().map(|n| format!("sandbox.{n}")).collect();
    format!("the manifest declares {}", names.join(", "))
}

/// The shape `template` names.
pub fn shape<'m>(m: &'m Manifest, template: &str) -> Result<&'m SandboxShape, SandboxError> {
    m.sandboxes
        .get(template)
        .ok_or_else(|| SandboxError::UnknownTemplate {
            name: template.to_string(),
            known: known(m),
        })
}

/// The ttl asked for (`None`: the shape's), in seconds, checked against `max_ttl`.
pub fn ttl(template: &str, s: &SandboxShape, asked: Option<&str>) -> Result<u64, SandboxError> {
    let Some(a) = asked else { return Ok(s.ttl) };
    let secs = parse_secs(a).map_err(SandboxError::BadTtl)?;
    if secs > s.max_ttl {
        return Err(SandboxError::TtlTooLong {
            template: template.to_string(),
            ttl: human(secs),
            max: human(s.max_ttl),
        });
    }
    Ok(secs)
}

/// `max_instances` of `template`, counted over the instances there are.
pub fn check_room(m: &Manifest, template: &str, s: &SandboxShape) -> Result<(), SandboxError> {
    let count = m
        .instances
        .values()
        .filter(|i| i.sandbox == template)
        .count();
    match s.max_instances {
        Some(max) if count >= max as usize => Err(SandboxError::MaxInstances {
            template: template.to_string(),
            count,
            max,
        }),
        _ => Ok(()),
    }
}

/// A name the user asked for: a VM name not yet used, short enough for a TAP.
pub fn check_name(m: &Manifest, s: &SandboxShape, name: &str) -> Result<(), SandboxError> {
    let bad = |reason: String| SandboxError::BadName {
        name: name.to_string(),
        reason,
    };
    crate::manifest::units::check_name(name).map_err(bad)?;
    if s.network.is_some() && name.len() > 10 {
        return Err(bad(format!(
            "a VM with a network has a name of at most 10 characters, this one has {}",
            name.len()
        )));
    }
    let taken = m
        .resources
        .keys()
        .any(|a| a.name == name || a.name == format!("{name}-root"));
    if taken {
        return Err(bad("a VM or drive of that name exists already".to_string()));
    }
    Ok(())
}

/// `TEMPLATE-XXXX` (4 hex digits from `random`), one not taken yet.
pub fn pick_name(
    template: &str,
    taken: &BTreeSet<String>,
    mut random: impl FnMut() -> u16,
) -> String {
    loop {
        let n = format!("{template}-{:04x}", random());
        if !taken.contains(&n) && !taken.contains(&format!("{n}-root")) {
            return n;
        }
    }
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

/// The text of an instance's file: its `[instance]` table, then its VM in fort.toml's format.
pub fn file_text(vm: &str, template: &str, s: &SandboxShape, created: u64, expires: u64) -> String {
    let mut t = format!(
        "# A sandbox made by fort from [sandbox.{template}] (docs/sandboxes.md). fort rewrites\n\
         # this file on sandbox_extend and removes it when the sandbox expires or is destroyed;\n\
         # removing it by hand destroys the sandbox on the next pass.\n\
         [instance]\n\
         sandbox = \"{template}\"\n\
         created = \"{}\"\n\
         expires = \"{}\"\n",
        rfc3339(created),
        rfc3339(expires)
    );
    if let Some(i) = s.idle_timeout {
        t.push_str(&format!("idle_timeout = \"{}\"\n", human(i)));
    }
    t.push_str(&format!("\n[vm.{vm}]\n"));
    if s.vmm == Vmm::Qemu {
        t.push_str("vmm = \"qemu\"\n");
    }
    t.push_str(&format!(
        "kernel = \"{}\"\nroot = {{ template = \"{}\", size = \"{}\" }}\nvcpus = {}\nmemory = \"{}\"\n",
        s.kernel,
        s.template,
        format_size(s.size),
        s.vcpus,
        format_size(s.memory)
    ));
    if let Some(n) = &s.network {
        t.push_str(&format!("network = \"{n}\"\n"));
    }
    // A sandbox that dies is gone: it is not restarted behind its user's back.
    t.push_str("restart = \"never\"\n");
    t
}

/// The same file with a new expiry (sandbox_extend): only the `expires` line changes.
pub fn with_expiry(text: &str, expires: u64) -> String {
    let mut out = String::with_capacity(text.len());
    let mut done = false;
    for line in text.split_inclusive('\n') {
        if !done && line.trim_start().starts_with("expires") && line.contains('=') {
            out.push_str(&format!("expires = \"{}\"\n", rfc3339(expires)));
            done = true;
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Why `i` is due to be destroyed at `now` (unix seconds), given when an agent request last
/// reached it (`None`: never since it was made).
pub fn expired(i: &Instance, now: u64, last_activity: Option<u64>) -> Option<String> {
    if now >= i.expires {
        return Some(format!(
            "its ttl ran out at {} (made {})",
            rfc3339(i.expires),
            rfc3339(i.created)
        ));
    }
    let idle = i.idle_timeout?;
    let last = last_activity.unwrap_or(i.created).max(i.created);
    (now >= last + idle).then(|| {
        format!(
            "idle: no agent request for {} (idle_timeout {}; last at {})",
            human(now - last),
            human(idle),
            rfc3339(last)
        )
    })
}

/// When the next instance is due (unix seconds), for the loop's wake-up.
pub fn next_due<'a>(
    instances: impl Iterator<Item = &'a Instance>,
    last_activity: &dyn Fn(&str) -> Option<u64>,
) -> Option<u64> {
    instances
        .map(|i| {
            let idle = i
                .idle_timeout
                .map(|t| last_activity(&i.vm).unwrap_or(i.created).max(i.created) + t);
            idle.map_or(i.expires, |d| d.min(i.expires))
        })
        .min()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "sandbox_tests.rs"]
mod tests;
