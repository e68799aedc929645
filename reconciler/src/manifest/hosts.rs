//! Per-host selection (pure): which of a manifest's resources are desired on one host —
//! `[fort] hosts` for a whole file, `hosts` on a resource (which wins), default every host —
//! and that whatever a selected resource uses is selected for that host too.
//!
//! Selection happens on the parsed files, before resolution, so each host's view is validated
//! on its own: two VMs on different hosts may publish the same port, and a name may be
//! defined once per host (`vm.web` for h1 in one file, for h2 in another).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use toml::Spanned;

use super::raw::*;
use super::validate::Ctx;
use crate::address::{Address, Kind};

/// Which resources a load keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HostSelection {
    /// Every resource, whatever its `hosts` (the library default; the CLI always names a host).
    #[default]
    Every,
    /// The resources for this host: those whose hosts include it, and those without any.
    Host(String),
}

impl HostSelection {
    pub fn host(&self) -> Option<&str> {
        match self {
            HostSelection::Every => None,
            HostSelection::Host(h) => Some(h),
        }
    }
}

type List = Spanned<Vec<Spanned<String>>>;

/// What selection needs of each kind of table.
trait Selectable {
    fn hosts(&self) -> Option<&List>;
    /// The other resources it names, with where it names them.
    fn refs(&self) -> Vec<(Kind, &str, Range<usize>)>;
}

fn one(kind: Kind, s: &Spanned<String>) -> (Kind, &str, Range<usize>) {
    (kind, s.get_ref().as_str(), s.span())
}

macro_rules! no_refs {
    ($($t:ty),*) => {$(
        impl Selectable for $t {
            fn hosts(&self) -> Option<&List> {
                self.hosts.as_ref()
            }
            fn refs(&self) -> Vec<(Kind, &str, Range<usize>)> {
                Vec::new()
            }
        }
    )*};
}

no_refs!(RawFirecracker, RawKernel, RawRootfs, RawNetwork);

impl Selectable for RawTemplate {
    fn hosts(&self) -> Option<&List> {
        self.hosts.as_ref()
    }
    fn refs(&self) -> Vec<(Kind, &str, Range<usize>)> {
        vec![one(Kind::Rootfs, &self.rootfs)]
    }
}

impl Selectable for RawDrive {
    fn hosts(&self) -> Option<&List> {
        self.hosts.as_ref()
    }
    fn refs(&self) -> Vec<(Kind, &str, Range<usize>)> {
        self.template
            .iter()
            .map(|t| one(Kind::Template, t))
            .collect()
    }
}

impl Selectable for RawVm {
    fn hosts(&self) -> Option<&List> {
        self.hosts.as_ref()
    }
    fn refs(&self) -> Vec<(Kind, &str, Range<usize>)> {
        let mut out = Vec::new();
        out.extend(self.firecracker.iter().map(|f| one(Kind::Firecracker, f)));
        out.push(one(Kind::Kernel, &self.kernel));
        match self.root.get_ref() {
            RawRoot::Drive(d) => out.push((Kind::Drive, d.as_str(), self.root.span())),
            RawRoot::Inline(i) => out.push(one(Kind::Template, &i.template)),
        }
        for d in self.drives.iter().flatten() {
            out.push((Kind::Drive, d.get_ref().name(), d.span()));
        }
        out.extend(self.network.iter().map(|n| one(Kind::Network, n)));
        out
    }
}

/// One declared table, for the reference check.
struct Decl {
    file: usize,
    span: Range<usize>,
    /// Its hosts (its own, else its file's); `None`: every host.
    hosts: Option<Vec<String>>,
    selected: bool,
}

fn list_names(l: &List) -> Vec<String> {
    l.get_ref().iter().map(|h| h.get_ref().clone()).collect()
}

/// A host name as `hostname` prints it: letters, digits, `-`, `.` and `_`.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// Check one `hosts` list (reported under `what`), adding its names to `names`.
fn check_list(cx: &mut Ctx<'_>, file: usize, what: &str, l: &List, names: &mut BTreeSet<String>) {
    if l.get_ref().is_empty() {
        cx.err(
            file,
            &l.span(),
            format!("{what}: hosts = [] selects no host (leave `hosts` out for every host)"),
        );
        return;
    }
    let mut seen = BTreeSet::new();
    for h in l.get_ref() {
        let n = h.get_ref();
        if !valid_host(n) {
            cx.err(
                file,
                &h.span(),
                format!("{what}: hosts: `{n}` is not a host name (letters, digits, `-`, `.` and `_`, as `hostname` prints it)"),
            );
        } else if !seen.insert(n.as_str()) {
            cx.err(
                file,
                &h.span(),
                format!("{what}: hosts: `{n}` is listed twice"),
            );
        } else {
            names.insert(n.clone());
        }
    }
}

/// Every host a `hosts` list names, each list checked (non-empty, host names, no repeats).
pub(super) fn names(cx: &mut Ctx<'_>, raws: &[(usize, RawFile)]) -> BTreeSet<String> {
    fn tables<T: Selectable>(
        cx: &mut Ctx<'_>,
        file: usize,
        kind: Kind,
        t: &BTreeMap<Spanned<String>, Spanned<T>>,
        names: &mut BTreeSet<String>,
    ) {
        for (name, v) in t {
            if let Some(l) = v.get_ref().hosts() {
                let what = Address::new(kind, name.get_ref()).to_string();
                check_list(cx, file, &what, l, names);
            }
        }
    }
    let mut names = BTreeSet::new();
    for (file, raw) in raws {
        let file = *file;
        if let Some(l) = raw.fort.as_ref().and_then(|f| f.get_ref().hosts.as_ref()) {
            check_list(cx, file, "[fort]", l, &mut names);
        }
        tables(cx, file, Kind::Firecracker, &raw.firecracker, &mut names);
        tables(cx, file, Kind::Kernel, &raw.kernel, &mut names);
        tables(cx, file, Kind::Rootfs, &raw.rootfs, &mut names);
        tables(cx, file, Kind::Template, &raw.template, &mut names);
        tables(cx, file, Kind::Network, &raw.network, &mut names);
        tables(cx, file, Kind::Drive, &raw.drive, &mut names);
        tables(cx, file, Kind::Vm, &raw.vm, &mut names);
    }
    names
}

/// Keep only what is for `host`, reporting each reference from a kept resource to one that is
/// declared only for other hosts (at the reference, naming where the other one is).
pub(super) fn select(cx: &mut Ctx<'_>, raws: &mut [(usize, RawFile)], host: &str) {
    let mut decls: BTreeMap<Address, Vec<Decl>> = BTreeMap::new();
    let mut uses: Vec<(usize, Address, Kind, String, Range<usize>)> = Vec::new();
    fn scan<T: Selectable>(
        file: usize,
        file_hosts: Option<&List>,
        host: &str,
        kind: Kind,
        t: &BTreeMap<Spanned<String>, Spanned<T>>,
        decls: &mut BTreeMap<Address, Vec<Decl>>,
        uses: &mut Vec<(usize, Address, Kind, String, Range<usize>)>,
    ) {
        for (name, v) in t {
            let hosts = v.get_ref().hosts().or(file_hosts).map(list_names);
            let selected = hosts.as_ref().is_none_or(|h| h.iter().any(|h| h == host));
            let address = Address::new(kind, name.get_ref());
            if selected {
                for (k, n, span) in v.get_ref().refs() {
                    uses.push((file, address.clone(), k, n.to_string(), span));
                }
            }
            decls.entry(address).or_default().push(Decl {
                file,
                span: v.span(),
                hosts,
                selected,
            });
        }
    }
    for (file, raw) in raws.iter() {
        let file = *file;
        let fh = raw.fort.as_ref().and_then(|f| f.get_ref().hosts.as_ref());
        let (d, u) = (&mut decls, &mut uses);
        scan(file, fh, host, Kind::Firecracker, &raw.firecracker, d, u);
        scan(file, fh, host, Kind::Kernel, &raw.kernel, d, u);
        scan(file, fh, host, Kind::Rootfs, &raw.rootfs, d, u);
        scan(file, fh, host, Kind::Template, &raw.template, d, u);
        scan(file, fh, host, Kind::Network, &raw.network, d, u);
        scan(file, fh, host, Kind::Drive, &raw.drive, d, u);
        scan(file, fh, host, Kind::Vm, &raw.vm, d, u);
    }
    for (file, from, kind, name, span) in uses {
        let to = Address::new(kind, &name);
        let Some(ds) = decls.get(&to) else {
            // Not declared at all: resolution reports it with the names that are.
            continue;
        };
        if ds.iter().any(|d| d.selected) {
            continue;
        }
        let elsewhere: Vec<String> = ds
            .iter()
            .map(|d| {
                let hosts = d.hosts.as_deref().unwrap_or_default().join(", ");
                format!("{to} at {} is for {hosts}", cx.origin(d.file, &d.span))
            })
            .collect();
        cx.err(
            file,
            &span,
            format!(
                "{from} is for host {host} but uses {to}, which is not: {}",
                elsewhere.join("; ")
            ),
        );
    }
    let keep = |file: usize, kind: Kind, name: &str| {
        decls
            .get(&Address::new(kind, name))
            .is_some_and(|ds| ds.iter().any(|d| d.file == file && d.selected))
    };
    for (file, raw) in raws.iter_mut() {
        let f = *file;
        raw.firecracker
            .retain(|n, _| keep(f, Kind::Firecracker, n.get_ref()));
        raw.kernel.retain(|n, _| keep(f, Kind::Kernel, n.get_ref()));
        raw.rootfs.retain(|n, _| keep(f, Kind::Rootfs, n.get_ref()));
        raw.template
            .retain(|n, _| keep(f, Kind::Template, n.get_ref()));
        raw.network
            .retain(|n, _| keep(f, Kind::Network, n.get_ref()));
        raw.drive.retain(|n, _| keep(f, Kind::Drive, n.get_ref()));
        raw.vm.retain(|n, _| keep(f, Kind::Vm, n.get_ref()));
    }
}

#[cfg(test)]
#[path = "hosts_tests.rs"]
mod tests;
