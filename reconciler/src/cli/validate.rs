//! `fort validate`: this host's view of the manifest, or every host's (`--all-hosts`).

use std::collections::BTreeMap;
use std::path::Path;

use super::args::ValidateArgs;
use super::{exit, session, Cli, CliError};
use crate::manifest::Manifest;

pub fn validate(cli: &Cli, args: &ValidateArgs) -> Result<u8, CliError> {
    let views = if args.all_hosts {
        every_host(&session::manifest_path(cli))?
    } else {
        vec![session::load_manifest(cli)?]
    };
    if cli.json {
        let view = |m: &Manifest| {
            serde_json::json!({
                "host": m.host,
                "files": m.files,
                "resources": m.resources.keys().map(ToString::to_string).collect::<Vec<_>>(),
            })
        };
        let v = match views.as_slice() {
            [m] if !args.all_hosts => {
                let mut v = view(m);
                v["valid"] = true.into();
                v
            }
            _ => {
                serde_json::json!({"valid": true, "hosts": views.iter().map(view).collect::<Vec<_>>()})
            }
        };
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(exit::OK);
    }
    for m in &views {
        let mut per_kind: BTreeMap<crate::Kind, usize> = BTreeMap::new();
        for a in m.resources.keys() {
            *per_kind.entry(a.kind).or_default() += 1;
        }
        let kinds: Vec<String> = per_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let kinds = if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.join(", ")
        };
        // The host is named when the manifest selects by host (else every host sees it all).
        let host = match &m.host {
            Some(h) if !m.hosts.is_empty() => format!(" for host {h}"),
            _ => String::new(),
        };
        println!(
            "The manifest is valid{host}: {} ({kinds}) in {}.",
            plural(m.resources.len(), "resource"),
            plural(m.files.len(), "file")
        );
    }
    Ok(exit::OK)
}

/// `validate --all-hosts`: each host's view (every host a `hosts` list names; one view of
/// everything when none does). Problems of all views are reported together, once each; one
/// found in only some views says which.
fn every_host(path: &Path) -> Result<Vec<Manifest>, CliError> {
    use crate::manifest::{self, Diagnostic, HostSelection, ManifestError};
    let sources = manifest::sources_of(&manifest::read_files(path)?);
    let names = manifest::host_names(&sources);
    let selections: Vec<HostSelection> = if names.is_empty() {
        vec![HostSelection::Every]
    } else {
        names.iter().cloned().map(HostSelection::Host).collect()
    };
    let mut views = Vec::new();
    let mut problems: Vec<(Diagnostic, Vec<String>)> = Vec::new();
    for sel in &selections {
        match manifest::load_sources(&sources, path, sel, &manifest::Fs) {
            Ok(m) => views.push(m),
            Err(ManifestError::Invalid(ds)) => {
                for d in ds {
                    let host = sel.host().unwrap_or_default().to_string();
                    match problems.iter_mut().find(|(p, _)| *p == d) {
                        Some((_, hosts)) => hosts.push(host),
                        None => problems.push((d, vec![host])),
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    if problems.is_empty() {
        return Ok(views);
    }
    let all = selections.len();
    let diagnostics = problems
        .into_iter()
        .map(|(mut d, hosts)| {
            if hosts.len() < all {
                d.message = format!("host {}: {}", hosts.join(", "), d.message);
            }
            d
        })
        .collect();
    Err(ManifestError::Invalid(diagnostics).into())
}
