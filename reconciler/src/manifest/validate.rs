//! Validation and resolution: merged raw files → [`Manifest`], or every problem found, each at
//! its file:line:column.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

use sha2::{Digest, Sha256};
use toml::Spanned;

use super::model::*;
use super::raw::*;
use super::units::{check_name, format_size, parse_mode, parse_size, LineIndex};
use super::validate_asset::{asset_fields, Infer};
use super::validate_network::NetInfo;
use super::{Diagnostic, ReadFile, Source};
use crate::address::{Address, Kind};

/// A declared table with where it came from.
pub(super) struct Entry<'a, T> {
    pub(super) file: usize,
    pub(super) name_span: Range<usize>,
    pub(super) span: Range<usize>,
    pub(super) raw: &'a T,
}

pub(super) type EntryRef<'a, T> = Entry<'a, T>;

pub(super) type Entries<'a, T> = BTreeMap<String, Entry<'a, T>>;

pub(super) struct Ctx<'a> {
    sources: &'a [Source],
    files: &'a dyn ReadFile,
    lines: Vec<LineIndex>,
    diags: Vec<(usize, usize, Diagnostic)>,
}

impl<'a> Ctx<'a> {
    pub(super) fn err(&mut self, file: usize, span: &Range<usize>, message: impl Into<String>) {
        let (line, column) = self.lines[file].line_col(&self.sources[file].text, span.start);
        self.diags.push((
            file,
            span.start,
            Diagnostic {
                file: self.sources[file].path.clone(),
                line,
                column,
                message: message.into(),
            },
        ));
    }

    pub(super) fn origin(&self, file: usize, span: &Range<usize>) -> Origin {
        let (line, column) = self.lines[file].line_col(&self.sources[file].text, span.start);
        Origin {
            file: self.sources[file].path.clone(),
            line,
            column,
        }
    }

    pub(super) fn source(&self, file: usize) -> &Source {
        &self.sources[file]
    }

    pub(super) fn dir(&self, file: usize) -> &Path {
        &self.sources[file].dir
    }
}

pub(super) fn resolve(
    sources: &[Source],
    path: &Path,
    selection: &super::HostSelection,
    files: &dyn ReadFile,
) -> Result<Manifest, Vec<Diagnostic>> {
    let mut cx = Ctx {
        sources,
        files,
        lines: sources.iter().map(|s| LineIndex::new(&s.text)).collect(),
        diags: Vec::new(),
    };
    let mut raws = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        match toml::from_str::<RawFile>(&s.text) {
            Ok(r) => raws.push((i, r)),
            Err(e) => {
                let msg = e.message().lines().collect::<Vec<_>>().join(": ");
                cx.err(i, &e.span().unwrap_or(0..0), msg);
            }
        }
    }
    if cx.diags.is_empty() {
        let hosts = super::hosts::names(&mut cx, &raws);
        if let Some(h) = selection.host() {
            super::hosts::select(&mut cx, &mut raws, h);
        }
        // A reference to another host's resource would also be "not defined": say it once.
        if cx.diags.is_empty() {
            let mut manifest = Resolver::new(&mut cx, &raws).run(path);
            manifest.hosts = hosts;
            manifest.host = selection.host().map(str::to_string);
            if cx.diags.is_empty() {
                return Ok(manifest);
            }
        }
    }
    let mut d = cx.diags;
    d.sort_by_key(|(f, off, _)| (*f, *off));
    Err(d.into_iter().map(|(_, _, d)| d).collect())
}

pub(super) fn host_names(sources: &[Source]) -> BTreeSet<String> {
    let mut cx = Ctx {
        sources,
        files: &super::Fs,
        lines: sources.iter().map(|s| LineIndex::new(&s.text)).collect(),
        diags: Vec::new(),
    };
    let raws: Vec<(usize, RawFile)> = sources
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, toml::from_str::<RawFile>(&s.text).ok()?)))
        .collect();
    super::hosts::names(&mut cx, &raws)
}

fn collect<'a, T>(
    cx: &mut Ctx<'_>,
    kind: Kind,
    tables: impl Iterator<Item = (usize, &'a BTreeMap<Spanned<String>, Spanned<T>>)>,
) -> Entries<'a, T>
where
    T: 'a,
{
    let mut out: Entries<'a, T> = BTreeMap::new();
    for (file, table) in tables {
        for (name, value) in table {
            let n = name.get_ref();
            if let Err(e) = check_name(n) {
                cx.err(file, &name.span(), format!("{kind}.{n}: {e}"));
                continue;
            }
            if let Some(first) = out.get(n) {
                let a = cx.origin(first.file, &first.span);
                let b = cx.origin(file, &value.span());
                cx.err(
                    file,
                    &value.span(),
                    format!("{kind}.{n} is defined twice: {a} and {b}"),
                );
                continue;
            }
            out.insert(
                n.clone(),
                Entry {
                    file,
                    name_span: name.span(),
                    span: value.span(),
                    raw: value.get_ref(),
                },
            );
        }
    }
    out
}

pub(super) struct Resolver<'c, 'a, 'r> {
    pub(super) cx: &'c mut Ctx<'a>,
    pub(super) raws: &'r [(usize, RawFile)],
    resources: BTreeMap<Address, Resource>,
}

impl<'c, 'a, 'r> Resolver<'c, 'a, 'r> {
    fn new(cx: &'c mut Ctx<'a>, raws: &'r [(usize, RawFile)]) -> Self {
        Resolver {
            cx,
            raws,
            resources: BTreeMap::new(),
        }
    }

    pub(super) fn add(
        &mut self,
        kind: Kind,
        name: &str,
        origin: Origin,
        spec: Spec,
        deps: Vec<Address>,
    ) {
        let mut deps = deps;
        deps.sort();
        deps.dedup();
        let address = Address::new(kind, name);
        self.resources
            .insert(address.clone(), Resource::new(address, origin, spec, deps));
    }

    pub(super) fn resource(&self, address: &Address) -> Option<&Resource> {
        self.resources.get(address)
    }

    fn run(mut self, path: &Path) -> Manifest {
        let raws = self.raws;
        let (state_dir, uid_range) = self.fort_table();
        let fcs = collect(
            self.cx,
            Kind::Firecracker,
            raws.iter().map(|(i, r)| (*i, &r.firecracker)),
        );
        let kernels = collect(
            self.cx,
            Kind::Kernel,
            raws.iter().map(|(i, r)| (*i, &r.kernel)),
        );
        let rootfss = collect(
            self.cx,
            Kind::Rootfs,
            raws.iter().map(|(i, r)| (*i, &r.rootfs)),
        );
        let templates = collect(
            self.cx,
            Kind::Template,
            raws.iter().map(|(i, r)| (*i, &r.template)),
        );
        let networks = collect(
            self.cx,
            Kind::Network,
            raws.iter().map(|(i, r)| (*i, &r.network)),
        );
        let drives = collect(
            self.cx,
            Kind::Drive,
            raws.iter().map(|(i, r)| (*i, &r.drive)),
        );
        let vms = collect(self.cx, Kind::Vm, raws.iter().map(|(i, r)| (*i, &r.vm)));
        let instances = super::validate_sandbox::instances(self.cx, raws);

        for (name, e) in &fcs {
            let addr = format!("firecracker.{name}");
            let f = asset_fields!(e.raw);
            let infer = if e.raw.member.is_some() {
                Infer::Archive
            } else {
                Infer::Extension
            };
            if let (Some(j), None) = (&e.raw.jailer_member, &e.raw.member) {
                self.cx.err(
                    e.file,
                    &j.span(),
                    format!("{addr}: jailer_member needs `member`: the jailer comes from the same release archive as the firecracker binary"),
                );
                continue;
            }
            if let Some(source) = self.asset(e.file, &addr, &f, infer) {
                let spec = Spec::Firecracker(FirecrackerSpec {
                    source,
                    member: e.raw.member.clone(),
                    jailer_member: e.raw.jailer_member.as_ref().map(|j| j.get_ref().clone()),
                });
                let o = self.cx.origin(e.file, &e.span);
                self.add(Kind::Firecracker, name, o, spec, vec![]);
            }
        }
        for (name, e) in &kernels {
            self.kernel(name, e);
        }
        for (name, e) in &rootfss {
            self.rootfs(name, e);
        }
        for (name, e) in &templates {
            self.template(name, e, &rootfss);
        }
        let nets = self.networks(&networks);
        for (name, e) in &drives {
            self.drive(name, e, &templates);
        }
        let refs = Refs {
            fcs: fcs.keys().cloned().collect(),
            jailed_fcs: fcs
                .iter()
                .filter(|(_, e)| e.raw.member.is_some() && e.raw.jailer_member.is_some())
                .map(|(n, _)| n.clone())
                .collect(),
            kernels: kernels.keys().cloned().collect(),
            templates: templates.keys().cloned().collect(),
            warm: templates
                .iter()
                .filter(|(_, e)| e.raw.warm == Some(true))
                .map(|(n, _)| n.clone())
                .collect(),
            drives: drives
                .iter()
                .map(|(n, e)| (n.clone(), (e.file, e.span.clone())))
                .collect(),
            vms: vms
                .iter()
                .map(|(n, e)| (n.clone(), (e.file, e.span.clone())))
                .collect(),
            nets,
            sandbox_vms: instances
                .iter()
                .map(|(vm, i)| (vm.clone(), i.sandbox.clone()))
                .collect(),
        };
        let sandboxes = super::validate_sandbox::shapes(&mut self, &refs);
        // A VM and its inline root drive each; pools grow it further.
        let mut vm_resources = Vec::with_capacity(2 * vms.len());
        super::validate_vm::vms(self.cx, &mut vm_resources, &vms, &refs);
        // Built in bulk (one sort, then a linear fill) rather than by a tree insert per VM.
        self.resources = std::mem::take(&mut self.resources)
            .into_iter()
            .chain(vm_resources)
            .collect();
        self.check_cycles();
        let files = self.cx.sources.iter().map(|s| s.path.clone()).collect();
        Manifest {
            path: path.to_path_buf(),
            files,
            state_dir,
            uid_range,
            resources: self.resources,
            hosts: BTreeSet::new(),
            host: None,
            sandboxes,
            instances,
            held: BTreeSet::new(),
            sandbox_problems: Vec::new(),
        }
    }

    pub(super) fn size(
        &mut self,
        file: usize,
        addr: &str,
        field: &str,
        s: &Spanned<RawSize>,
    ) -> Option<u64> {
        let r = match s.get_ref() {
            RawSize::Bytes(b) if *b > 0 => Ok(*b as u64),
            RawSize::Bytes(_) => Err("size must be greater than 0".to_string()),
            RawSize::Text(t) => parse_size(t),
        };
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.cx
                    .err(file, &s.span(), format!("{addr}: {field}: {e}"));
                None
            }
        }
    }

    fn template(
        &mut self,
        name: &str,
        e: &Entry<'_, RawTemplate>,
        rootfss: &Entries<'_, RawRootfs>,
    ) {
        let addr = format!("template.{name}");
        let mut ok = reference(
            self.cx,
            e.file,
            &addr,
            "rootfs",
            &e.raw.rootfs,
            rootfss.keys(),
        );
        let size = match e.raw.size.get_ref() {
            RawSize::Text(t) if t == "auto" => Some(ImageSize::AUTO),
            _ => self
                .size(e.file, &addr, "size", &e.raw.size)
                .map(ImageSize::Fixed),
        };
        if let Some(ImageSize::Fixed(s)) = size {
            if s < (1 << 20) {
                self.cx.err(
                    e.file,
                    &e.raw.size.span(),
                    format!(
                        "{addr}: size: an image needs at least 1MiB, got {}",
                        format_size(s)
                    ),
                );
                ok = false;
            }
        }
        let mut files = BTreeMap::new();
        for (path, overlay) in &e.raw.files {
            let p = path.get_ref();
            if !p.starts_with('/') || p.split('/').any(|c| c == "..") || p == "/" {
                self.cx.err(e.file, &path.span(), format!("{addr}: overlay path `{p}` must be an absolute path inside the image without `..`, e.g. \"/etc/motd\""));
                ok = false;
                continue;
            }
            match self.overlay(e.file, &addr, p, overlay) {
                Some(o) => {
                    files.insert(p.clone(), o);
                }
                None => ok = false,
            }
        }
        let guest_agent = e.raw.guest_agent.unwrap_or(true);
        let init = match e.raw.init.as_ref() {
            None => InitMode::Agent,
            Some(i) => match i.get_ref().as_str() {
                "agent" => InitMode::Agent,
                "distro" if !guest_agent => {
                    self.cx.err(e.file, &i.span(), format!("{addr}: init = \"distro\" runs the guest agent as a service of the image's init, so it needs guest_agent = true (guest_agent = false already leaves /sbin/init alone)"));
                    ok = false;
                    InitMode::Distro
                }
                "distro" => InitMode::Distro,
                other => {
                    self.cx.err(
                        e.file,
                        &i.span(),
                        format!("{addr}: init: expected \"agent\" or \"distro\", got \"{other}\""),
                    );
                    ok = false;
                    InitMode::Agent
                }
            },
        };
        let image = self.rootfs_image(e.raw.rootfs.get_ref()).cloned();
        let run_image_cmd = e.raw.run_image_cmd.as_ref().is_some_and(|r| *r.get_ref());
        if let (Some(r), false) = (&e.raw.run_image_cmd, image.is_some()) {
            if *r.get_ref() && rootfss.contains_key(e.raw.rootfs.get_ref()) {
                self.cx.err(
                    e.file,
                    &r.span(),
                    format!(
                        "{addr}: run_image_cmd needs an OCI image rootfs (`image = \"…\"`), and rootfs.{} is a tarball",
                        e.raw.rootfs.get_ref()
                    ),
                );
                ok = false;
            }
        }
        let (true, Some(size)) = (ok, size) else {
            return;
        };
        let spec = Spec::Template(TemplateSpec {
            rootfs: e.raw.rootfs.get_ref().clone(),
            size,
            guest_agent,
            init,
            files,
            image_digest: image.and_then(|i| i.digest),
            run_image_cmd,
        });
        let o = self.cx.origin(e.file, &e.span);
        let dep = Address::new(Kind::Rootfs, e.raw.rootfs.get_ref());
        self.add(Kind::Template, name, o, spec, vec![dep]);
    }

    fn overlay(
        &mut self,
        file: usize,
        addr: &str,
        path: &str,
        o: &Spanned<RawOverlay>,
    ) -> Option<FileOverlay> {
        match o.get_ref() {
            RawOverlay::Text(t) => Some(FileOverlay {
                content: OverlayContent::Inline(t.clone()),
                mode: 0o644,
            }),
            RawOverlay::Table(t) => {
                let mode = match &t.mode {
                    Some(m) => match parse_mode(m.get_ref()) {
                        Ok(v) => v,
                        Err(e) => {
                            self.cx.err(file, &m.span(), format!("{addr}: {e}"));
                            return None;
                        }
                    },
                    None => 0o644,
                };
                let content = match (&t.source, &t.content) {
                    (Some(src), None) => {
                        let abs = self.cx.dir(file).join(src.get_ref());
                        match self.cx.files.read(&abs) {
                            Ok(bytes) => OverlayContent::Source {
                                sha256: hex::encode(Sha256::digest(&bytes)),
                                path: abs,
                            },
                            Err(err) => {
                                self.cx.err(
                                    file,
                                    &src.span(),
                                    format!(
                                        "{addr}: overlay source `{}` cannot be read ({}): {err}",
                                        src.get_ref(),
                                        abs.display()
                                    ),
                                );
                                return None;
                            }
                        }
                    }
                    (None, Some(c)) => OverlayContent::Inline(c.clone()),
                    _ => {
                        self.cx.err(file, &o.span(), format!("{addr}: overlay `{path}` needs exactly one of `source` or `content`"));
                        return None;
                    }
                };
                Some(FileOverlay { content, mode })
            }
        }
    }

    fn drive(&mut self, name: &str, e: &Entry<'_, RawDrive>, templates: &Entries<'_, RawTemplate>) {
        let addr = format!("drive.{name}");
        let mut ok = true;
        if let Some(t) = &e.raw.template {
            ok = reference(self.cx, e.file, &addr, "template", t, templates.keys());
        }
        let size = self.size(e.file, &addr, "size", &e.raw.size);
        let (true, Some(size)) = (ok, size) else {
            return;
        };
        let template = e.raw.template.as_ref().map(|t| t.get_ref().clone());
        let deps = template
            .iter()
            .map(|t| Address::new(Kind::Template, t))
            .collect();
        let spec = Spec::Drive(DriveSpec {
            template,
            size,
            protect: e.raw.protect.unwrap_or(false),
            pool: None,
            sandbox: None,
        });
        let o = self.cx.origin(e.file, &e.span);
        self.add(Kind::Drive, name, o, spec, deps);
    }

    fn check_cycles(&mut self) {
        let nodes = self
            .resources
            .values()
            .map(|r| (&r.address, r.deps.as_slice()));
        if let Err(crate::graph::GraphError::Cycle(cycle)) = crate::graph::Graph::new(nodes) {
            if let Some(first) = cycle.first().and_then(|a| self.resources.get(a)) {
                let o = first.origin.clone();
                let text = cycle
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" → ");
                self.cx.diags.push((
                    0,
                    0,
                    Diagnostic {
                        file: o.file,
                        line: o.line,
                        column: o.column,
                        message: format!("dependency cycle: {text}"),
                    },
                ));
            }
        }
    }
}

/// Names known to VM validation.
pub(super) struct Refs {
    pub fcs: Vec<String>,
    /// The `[firecracker.*]` assets with a jailer (`jailer_member`).
    pub jailed_fcs: Vec<String>,
    pub kernels: Vec<String>,
    pub templates: Vec<String>,
    /// The templates with `warm = true`.
    pub warm: Vec<String>,
    pub drives: BTreeMap<String, (usize, Range<usize>)>,
    pub vms: BTreeMap<String, (usize, Range<usize>)>,
    pub nets: BTreeMap<String, NetInfo>,
    /// Sandbox instances' VMs → the `[sandbox.NAME]` each was made from.
    pub sandbox_vms: BTreeMap<String, String>,
}

/// Check that `value` names one of `known`; report it otherwise.
pub(super) fn reference<'k>(
    cx: &mut Ctx<'_>,
    file: usize,
    addr: &str,
    kind: &str,
    value: &Spanned<String>,
    known: impl Iterator<Item = &'k String>,
) -> bool {
    let known: BTreeSet<&String> = known.collect();
    if known.contains(value.get_ref()) {
        return true;
    }
    let list = if known.is_empty() {
        format!("no {kind} is defined")
    } else {
        format!(
            "defined: {}",
            known.into_iter().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    cx.err(
        file,
        &value.span(),
        format!(
            "{addr}: {kind} `{}` is not defined ({list})",
            value.get_ref()
        ),
    );
    false
}
