//! The resolved manifest: every resource with its canonical spec, origin and references.
//!
//! This is what validation produces and what the graph, planner and resource kinds consume.
//! Specs serialize to the canonical JSON that is hashed, recorded in state and diffed field by
//! field by the planner, so field names here are part of the state format.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::OnceLock;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::address::{Address, Kind};

/// Where a resource was declared: the file and the 1-based line/column of its table header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A validated manifest, resources keyed (and therefore ordered) by address.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The path the user gave (`-f`), a file or a directory.
    pub path: PathBuf,
    /// Every file that was read, in the order they were merged.
    pub files: Vec<PathBuf>,
    /// `[fort] state_dir`, made absolute relative to the file that set it.
    pub state_dir: Option<PathBuf>,
    /// `[fort] uid_range`: the uids confined VMs are given.
    pub uid_range: Option<(u32, u32)>,
    pub resources: BTreeMap<Address, Resource>,
    /// Every host a `hosts` list names (in the whole manifest, before selection).
    pub hosts: std::collections::BTreeSet<String>,
    /// The host `resources` were selected for (`None`: every resource, whatever its hosts).
    pub host: Option<String>,
    /// `[sandbox.NAME]` shapes, by name.
    pub sandboxes: BTreeMap<String, SandboxShape>,
    /// The sandbox instances merged in from `state_dir/sandboxes/`, by VM name.
    pub instances: BTreeMap<String, Instance>,
    /// Resources of sandbox files that do not validate: left as they are (neither changed nor
    /// destroyed) until their file is fixed or removed.
    pub held: std::collections::BTreeSet<Address>,
    /// Why those files do not validate.
    pub sandbox_problems: Vec<super::Diagnostic>,
}

impl Manifest {
    /// A digest of every resource's address and canonical spec: equal digests mean the same
    /// desired state (used to refuse stale saved plans).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (addr, res) in &self.resources {
            h.update(addr.to_string().as_bytes());
            h.update([0]);
            h.update(res.spec_hash().as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    }
}

impl Manifest {
    /// The same manifest with the digests that tags resolved to (`rootfs name → digest`)
    /// written into the image rootfs specs and the specs of the templates built from them.
    pub fn pin_images(&self, digests: &BTreeMap<String, String>) -> Manifest {
        let mut out = self.clone();
        for r in out.resources.values_mut() {
            let spec = match &r.spec {
                Spec::Rootfs(RootfsSpec::Image { image }) => match digests.get(&r.address.name) {
                    Some(d) if image.digest.as_ref() != Some(d) => {
                        let mut image = image.clone();
                        image.digest = Some(d.clone());
                        Spec::Rootfs(RootfsSpec::Image { image })
                    }
                    _ => continue,
                },
                Spec::Template(t) => match digests.get(&t.rootfs) {
                    Some(d) if t.image_digest.as_ref() != Some(d) => {
                        let mut t = t.clone();
                        t.image_digest = Some(d.clone());
                        Spec::Template(t)
                    }
                    _ => continue,
                },
                _ => continue,
            };
            *r = Resource::new(r.address.clone(), r.origin.clone(), spec, r.deps.clone());
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Resource {
    pub address: Address,
    pub origin: Origin,
    pub spec: Spec,
    /// What this resource references (edges of the graph), sorted, without duplicates.
    pub deps: Vec<Address>,
    /// `spec.hash()`, taken once: a plan compares it with the recorded hash of every
    /// resource, and some kinds look at it again. A loaded spec is never changed.
    hash: OnceLock<String>,
}

impl Resource {
    pub fn new(address: Address, origin: Origin, spec: Spec, deps: Vec<Address>) -> Resource {
        Resource {
            address,
            origin,
            spec,
            deps,
            hash: OnceLock::new(),
        }
    }

    /// The canonical JSON of the spec (an object), as recorded in state.
    pub fn spec_json(&self) -> serde_json::Value {
        self.spec.to_json()
    }

    pub fn spec_hash(&self) -> &str {
        self.hash.get_or_init(|| self.spec.hash())
    }
}

/// The desired configuration of one resource. Serialized untagged: the kind is in the address.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Spec {
    Firecracker(FirecrackerSpec),
    Kernel(KernelSpec),
    Rootfs(RootfsSpec),
    Template(TemplateSpec),
    Network(NetworkSpec),
    Drive(DriveSpec),
    Vm(VmSpec),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Firecracker(_) => Kind::Firecracker,
            Spec::Kernel(_) => Kind::Kernel,
            Spec::Rootfs(_) => Kind::Rootfs,
            Spec::Template(_) => Kind::Template,
            Spec::Network(_) => Kind::Network,
            Spec::Drive(_) => Kind::Drive,
            Spec::Vm(_) => Kind::Vm,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        // Serializing plain data structs with string keys cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// sha256 of the spec serialized straight to JSON: struct field order is fixed and maps are
    /// BTreeMaps, so the encoding is deterministic. No `Value` tree is built, which keeps it
    /// cheap enough for the planner to compare hashes before comparing fields.
    pub fn hash(&self) -> String {
        // One buffer and one hasher update: sha256 fed a few bytes per JSON token was slower.
        let mut buf = Vec::with_capacity(512);
        // Writing plain data structs into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut buf, self);
        hex::encode(Sha256::digest(&buf))
    }
}

/// Whether the spec field `field` of a `kind` holds a size in bytes (declared as a size in the
/// manifest: a template's and a drive's `size` — which is also where a VM's inline
/// `root = { size }` ends up — and a VM's `memory`). Plans print these with binary units.
/// A new size field of a spec belongs here too.
pub fn is_size_field(kind: Kind, field: &str) -> bool {
    matches!(
        (kind, field),
        (Kind::Template, "size") | (Kind::Drive, "size") | (Kind::Vm, "memory")
    )
}

/// Where an asset comes from and how to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetSource {
    /// `https://…`, `http://…`, or `file:///abs/path` (plain paths in the manifest are made
    /// absolute relative to their file and turned into `file://` URLs).
    pub url: String,
    /// Lowercase hex sha256 of the bytes as fetched (before decompression).
    pub sha256: Option<String>,
    /// The publisher's checksum file (`sha256sum` format, or one bare hash).
    pub sha256_url: Option<String>,
    pub minisign: Option<Minisign>,
    pub decompress: Decompress,
}

impl AssetSource {
    pub fn is_local(&self) -> bool {
        self.url.starts_with("file://")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minisign {
    /// The base64 public key (the second line of a minisign `.pub` file).
    pub public_key: String,
    /// Where the `.minisig` file is (URL rules as for `url`).
    pub signature_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decompress {
    None,
    Xz,
    Gzip,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirecrackerSpec {
    pub source: AssetSource,
    /// The file to extract from a release archive (`.tgz`/`.tar.gz`/`.tar`); `None` when the URL
    /// is the binary itself.
    pub member: Option<String>,
    /// The jailer in the same archive, when VMs should start through it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jailer_member: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelSpec {
    pub source: AssetSource,
    pub cmdline: String,
    pub initrd: Option<AssetSource>,
}

pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// A root filesystem: a tarball, or an OCI image. Serialized untagged, so a tarball's spec
/// (`{"source": …}`) is what older forts recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RootfsSpec {
    Tarball { source: AssetSource },
    Image { image: ImageSource },
}

impl RootfsSpec {
    pub fn image(&self) -> Option<&ImageSource> {
        match self {
            RootfsSpec::Image { image } => Some(image),
            RootfsSpec::Tarball { .. } => None,
        }
    }
}

/// Where an OCI image is: a registry repository, or an OCI image layout directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageLocation {
    Registry {
        /// `host[:port]`; `docker.io` for Docker Hub.
        registry: String,
        /// `library/debian`.
        repository: String,
    },
    Layout {
        /// The layout directory (absolute).
        layout: PathBuf,
    },
}

/// An OCI image rootfs. `digest` is the image's manifest (or index) digest: written in the
/// manifest (`@sha256:…`), or resolved from the tag when fort plans, so the spec (and every
/// template built from it) changes when the tag moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSource {
    #[serde(flatten)]
    pub location: ImageLocation,
    pub tag: Option<String>,
    pub digest: Option<String>,
    /// Plain http allowed for a registry that is not on loopback.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// A docker `config.json` with credentials (absolute path; the credentials are read when
    /// needed and never recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<PathBuf>,
}

impl ImageSource {
    /// `registry/repository:tag` (or `oci-layout:PATH:tag`), without the digest.
    pub fn name(&self) -> String {
        let mut s = match &self.location {
            ImageLocation::Registry {
                registry,
                repository,
            } => format!("{registry}/{repository}"),
            ImageLocation::Layout { layout } => format!("oci-layout:{}", layout.display()),
        };
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        s
    }

    /// The full reference: the name, and `@digest` when known.
    pub fn reference(&self) -> String {
        match &self.digest {
            Some(d) => format!("{}@{d}", self.name()),
            None => self.name(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateSpec {
    pub rootfs: String,
    pub size: ImageSize,
    pub guest_agent: bool,
    /// Left out of the serialized spec when "agent", so templates written before `init`
    /// existed keep their spec hash.
    #[serde(skip_serializing_if = "InitMode::is_agent")]
    pub init: InitMode,
    /// Image path → overlay.
    pub files: BTreeMap<String, FileOverlay>,
    /// The digest of the rootfs's OCI image (pinned, or resolved from its tag at plan time):
    /// a moved tag is a change of every template built from it. Left out for tarballs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// The guest agent runs the image's Entrypoint/Cmd as a supervised service.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub run_image_cmd: bool,
}

/// A template image's size: fixed, or measured from the files at build time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ImageSize {
    /// Bytes.
    Fixed(u64),
    /// `size = "auto"`: see `host::image::build::auto_size`.
    Auto(AutoSize),
}

/// The one word `size = "auto"` serializes as (spec hashes and plans show `"auto"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoSize {
    Auto,
}

impl ImageSize {
    pub const AUTO: ImageSize = ImageSize::Auto(AutoSize::Auto);

    /// The fixed size in bytes, if there is one.
    pub fn fixed(self) -> Option<u64> {
        match self {
            ImageSize::Fixed(b) => Some(b),
            ImageSize::Auto(_) => None,
        }
    }
}

/// Who is PID 1 in VMs of a template.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitMode {
    /// fort's guest agent is /sbin/init.
    #[default]
    Agent,
    /// The image's own /sbin/init stays; the agent is installed as one of its services.
    Distro,
}

impl InitMode {
    pub fn is_agent(&self) -> bool {
        *self == InitMode::Agent
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileOverlay {
    pub content: OverlayContent,
    /// Octal permission bits, e.g. 0o644.
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OverlayContent {
    Inline(String),
    /// A file next to the manifest; the hash makes an edit of the file a change of the spec.
    Source {
        path: PathBuf,
        sha256: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkSpec {
    pub cidr: Ipv4Net,
    /// The first host address of the CIDR; the bridge holds it.
    pub gateway: Ipv4Addr,
    pub nat: bool,
    pub isolated: bool,
    pub dns: Dns,
    /// The bridge interface name (`fort-<name>`, at most 15 bytes).
    pub bridge: String,
    /// What guests may reach beyond `allow`/`deny` (docs/security.md).
    pub egress: super::policy::Egress,
    /// `CIDR[:PORTS]` entries guests may reach, in normal form; evaluated before `egress`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// `CIDR[:PORTS]` entries guests may not reach; they win over `allow`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// `PORTS` of the host (any of its addresses) guests may open connections to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dns {
    FromHost,
    Servers(Vec<IpAddr>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriveSpec {
    /// The template whose image this drive is a clone of; `None` for an empty ext4 drive.
    pub template: Option<String>,
    /// Bytes.
    pub size: u64,
    pub protect: bool,
    /// The pool VM (`vm.NAME` with `count`) whose inline `root` declared this drive.
    pub pool: Option<String>,
    /// The `[sandbox.NAME]` of the sandbox whose root this is (docs/sandboxes.md). Left out
    /// for other drives, so their specs (and hashes) are what older forts recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Vmm {
    Firecracker,
    Qemu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Running,
    Stopped,
    /// vCPUs stopped, memory kept (docs/snapshots.md).
    Paused,
    /// Memory and device state in `state_dir/snapshots/VM/suspend/`, the VMM gone.
    Suspended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    OnFailure,
    Always,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmSpec {
    pub vmm: Vmm,
    /// The `[firecracker.*]` asset to run, when `vmm = "firecracker"` and one is declared;
    /// `None` means `firecracker` from PATH.
    pub firecracker: Option<String>,
    pub kernel: String,
    /// The root drive's name.
    pub root: String,
    /// Data drives in manifest order (the guest sees them as vdb, vdc, … in this order).
    pub drives: Vec<String>,
    /// The data drives the guest agent mounts at boot, in manifest order. Left out when
    /// empty, so the specs (and hashes) of VMs without mounts are what older forts recorded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    pub vcpus: u32,
    /// Bytes.
    pub memory: u64,
    pub network: Option<String>,
    /// A fixed address inside the network, or `None` to allocate one at apply time.
    pub ip: Option<Ipv4Addr>,
    /// A fixed MAC (`02:…` lowercase), or `None` to allocate one at apply time.
    pub mac: Option<String>,
    /// The TAP interface name (`fort-<vm>`), when the VM has a network.
    pub tap: Option<String>,
    pub state: VmState,
    pub restart: RestartPolicy,
    /// The pool (`[vm.NAME]` with `count`) this instance belongs to, and its index.
    pub pool: Option<PoolMember>,
    /// Published ports in normal form (`[ADDR:]HOST:GUEST/PROTO`), this instance's own (a
    /// pool's host range is split, one port per instance). Left out when empty, so the specs
    /// (and hashes) of VMs without ports are what older forts recorded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// The warm template its first boot is restored from (`[template.T] warm = true`, an
    /// inline root of T, QEMU, no data drives); `None`: it boots. Left out when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<String>,
    /// Why a VM with an inline root of a warm template boots instead (Firecracker, data
    /// drives), for the plan. Not part of the spec: never serialized.
    #[serde(skip)]
    pub not_warm: Option<String>,
    /// Checkpoints kept (`keep`; `None`: all). Left out when unset, so the specs (and hashes)
    /// of VMs without it are what older forts recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
    /// The `[sandbox.NAME]` a sandbox instance was made from (its file is in
    /// `state_dir/sandboxes/`); destroying it when the file goes is expected, not a
    /// `--max-destroy` matter. Left out for other VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// `[sandbox.NAME]`: a VM shape instantiated on demand (docs/sandboxes.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SandboxShape {
    pub vmm: Vmm,
    pub kernel: String,
    /// The inline root's template and size (bytes).
    pub template: String,
    pub size: u64,
    pub vcpus: u32,
    pub memory: u64,
    pub network: Option<String>,
    /// Seconds.
    pub ttl: u64,
    pub max_ttl: u64,
    pub idle_timeout: Option<u64>,
    pub max_instances: Option<u32>,
    pub origin: Origin,
}

/// A sandbox instance: the `[instance]` table of its file in `state_dir/sandboxes/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    /// The VM's name (also the file's stem).
    pub vm: String,
    /// The `[sandbox.NAME]` it was made from.
    pub sandbox: String,
    /// Unix seconds.
    pub created: u64,
    pub expires: u64,
    /// Seconds.
    pub idle_timeout: Option<u64>,
    pub file: PathBuf,
}

/// The serial number a data drive is given (QEMU: virtio-blk `serial=`, seen by the guest in
/// `/sys/block/vdX/serial`): `fort-NAME`, or when that exceeds virtio's 20 bytes, `fort-`, the
/// name's first 6 characters, `-` and 8 hex digits of its sha256.
pub fn drive_serial(name: &str) -> String {
    let s = format!("fort-{name}");
    if s.len() <= 20 {
        return s;
    }
    let h = hex::encode(Sha256::digest(name.as_bytes()));
    format!("fort-{}-{}", &name[..6], &h[..8])
}

/// The guest's name of the `index`-th data drive when the VMM gives no serial (Firecracker):
/// the root is vda, data drives follow in manifest order (vdb, vdc, … vdz, vdaa, …).
pub fn data_drive_device(index: usize) -> String {
    // Linux's disk naming: base-26 with letters, "a" after "z" carrying like "aa".
    let mut n = index + 1;
    let mut name = Vec::new();
    loop {
        name.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    name.reverse();
    format!("vd{}", String::from_utf8_lossy(&name))
}

/// One mounted data drive: `{ drive = "data", mount = "/data", options = "ro" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountSpec {
    pub drive: String,
    /// An absolute, normalised path in the guest (not `/`).
    pub path: String,
    /// Comma-separated mount options as written (validated charset); `None`: the defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolMember {
    pub pool: String,
    pub index: u32,
}
