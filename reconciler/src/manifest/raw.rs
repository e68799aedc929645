//! The serde types that mirror `fort.toml` one to one (with spans), and from which the JSON
//! Schema is generated. Nothing here is validated beyond TOML types and unknown keys.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

type Table<T> = BTreeMap<Spanned<String>, Spanned<T>>;

/// One `fort.toml` file.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "fort manifest",
    description = "A fort.toml file: kernels, root filesystems, templates, networks, drives and VMs."
)]
pub struct RawFile {
    /// Manifest settings (exactly one file of a manifest has them), and the hosts this file's
    /// resources are for (any file).
    #[schemars(with = "Option<RawFort>")]
    pub fort: Option<Spanned<RawFort>>,
    /// The Firecracker binary as a verified asset, by name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawFirecracker>")]
    pub firecracker: Table<RawFirecracker>,
    /// Guest kernels, by name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawKernel>")]
    pub kernel: Table<RawKernel>,
    /// Root filesystems (tarballs or OCI images), by name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawRootfs>")]
    pub rootfs: Table<RawRootfs>,
    /// ext4 images built from a rootfs, by name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawTemplate>")]
    pub template: Table<RawTemplate>,
    /// Bridged networks, by name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawNetwork>")]
    pub network: Table<RawNetwork>,
    /// Drives (clones of a template's image, or empty ext4), by name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawDrive>")]
    pub drive: Table<RawDrive>,
    /// Virtual machines (or pools of them with `count`), by name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawVm>")]
    pub vm: Table<RawVm>,
    /// VM shapes instantiated on demand (`fort serve`, `fort mcp --host`), by name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, super::raw_sandbox::RawSandbox>")]
    pub sandbox: Table<super::raw_sandbox::RawSandbox>,
    /// Only in the sandbox files fort writes under `state_dir/sandboxes/`.
    #[serde(default)]
    #[schemars(skip)]
    pub instance: Option<Spanned<super::raw_sandbox::RawInstance>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFort {
    /// Manifest format version: 1 (required in the one `[fort]` table that holds settings).
    #[schemars(with = "Option<u32>")]
    pub version: Option<Spanned<i64>>,
    /// Where fort keeps its state (relative to this file).
    #[schemars(with = "Option<String>")]
    pub state_dir: Option<Spanned<String>>,
    /// The uids (and gids, the same numbers) VMs run as: `"FIRST-LAST"`; default
    /// `"2000000000-2000065535"`. Must not overlap the host's users.
    #[schemars(with = "Option<String>")]
    pub uid_range: Option<Spanned<String>>,
    /// The hosts this file's resources are for (a resource's own `hosts` wins); default:
    /// every host. A `[fort]` table with only `hosts` may appear in every file.
    #[schemars(with = "Option<Vec<String>>")]
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
}

/// How to decompress an asset.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawDecompress {
    None,
    Xz,
    Gzip,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMinisign {
    /// The base64 public key (second line of the .pub file).
    #[schemars(with = "String")]
    pub public_key: Spanned<String>,
    /// Where the .minisig signature is.
    #[schemars(with = "String")]
    pub signature_url: Spanned<String>,
}

/// A downloadable, verifiable file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAsset {
    /// https://, http://, file:// or a path relative to this file.
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// sha256 of the bytes as fetched (required for remote URLs unless sha256_url is set).
    #[schemars(with = "Option<String>")]
    pub sha256: Option<Spanned<String>>,
    /// The publisher's checksum file (sha256sum format).
    #[schemars(with = "Option<String>")]
    pub sha256_url: Option<Spanned<String>>,
    /// A minisign signature to check.
    #[schemars(with = "Option<RawMinisign>")]
    pub minisign: Option<Spanned<RawMinisign>>,
    /// Decompression (default: inferred from the extension for kernels and initrds).
    #[schemars(with = "Option<RawDecompress>")]
    pub decompress: Option<Spanned<RawDecompress>>,
}

/// A root filesystem: a tarball (`url`, verified like any asset) or an OCI image (`image`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRootfs {
    /// A tarball: https://, http://, file:// or a path relative to this file.
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    /// sha256 of the tarball as fetched (required for remote URLs unless sha256_url is set).
    #[schemars(with = "Option<String>")]
    pub sha256: Option<Spanned<String>>,
    /// The publisher's checksum file (sha256sum format).
    #[schemars(with = "Option<String>")]
    pub sha256_url: Option<Spanned<String>>,
    /// A minisign signature to check.
    #[schemars(with = "Option<RawMinisign>")]
    pub minisign: Option<Spanned<RawMinisign>>,
    /// Decompression (default: none; the template step reads .tar, .tar.gz, .tar.xz).
    #[schemars(with = "Option<RawDecompress>")]
    pub decompress: Option<Spanned<RawDecompress>>,
    /// An OCI image instead of a tarball: "[REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST]" or
    /// "oci-layout:PATH[:TAG]" (an OCI image layout directory, relative to this file).
    #[schemars(with = "Option<String>")]
    pub image: Option<Spanned<String>>,
    /// Allow plain http to a registry that is not on loopback (default false).
    #[schemars(with = "Option<bool>")]
    pub insecure: Option<Spanned<bool>>,
    /// Registry credentials: a docker `config.json`, relative to this file.
    #[schemars(with = "Option<String>")]
    pub auth: Option<Spanned<String>>,
    /// Only on these hosts (matched against `--host`, default the machine's hostname);
    /// default: the file's `[fort] hosts`, else every host.
    #[schemars(with = "Option<Vec<String>>")]
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKernel {
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    #[schemars(with = "Option<String>")]
    pub sha256: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub sha256_url: Option<Spanned<String>>,
    #[schemars(with = "Option<RawMinisign>")]
    pub minisign: Option<Spanned<RawMinisign>>,
    #[schemars(with = "Option<RawDecompress>")]
    pub decompress: Option<Spanned<RawDecompress>>,
    /// Kernel command line (default "console=ttyS0 reboot=k panic=1").
    pub cmdline: Option<String>,
    /// An initrd, for kernels whose drivers are modules.
    #[schemars(with = "Option<RawAsset>")]
    pub initrd: Option<Spanned<RawAsset>>,
    /// Only on these hosts (matched against `--host`, default the machine's hostname);
    /// default: the file's `[fort] hosts`, else every host.
    #[schemars(with = "Option<Vec<String>>")]
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFirecracker {
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    #[schemars(with = "Option<String>")]
    pub sha256: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub sha256_url: Option<Spanned<String>>,
    #[schemars(with = "Option<RawMinisign>")]
    pub minisign: Option<Spanned<RawMinisign>>,
    #[schemars(with = "Option<RawDecompress>")]
    pub decompress: Option<Spanned<RawDecompress>>,
    /// The binary's path inside a release archive.
    pub member: Option<String>,
    /// The jailer's path inside the same release archive: VMs of this asset start through it
    /// (chroot, uid/gid, cgroup).
    #[schemars(with = "Option<String>")]
    pub jailer_member: Option<Spanned<String>>,
    /// Only on these hosts (matched against `--host`, default the machine's hostname);
    /// default: the file's `[fort] hosts`, else every host.
    #[schemars(with = "Option<Vec<String>>")]
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    /// The rootfs to unpack.
    #[schemars(with = "String")]
    pub rootfs: Spanned<String>,
    /// Size of the ext4 image, e.g. "1GiB", or "auto" (the files' size plus headroom, at
    /// least 1.5 times the files; see docs/images.md).
    #[schemars(with = "TemplateSizeSchema")]
    pub size: Spanned<RawSize>,
    /// Install fort's guest agent as /sbin/init (default true).
    pub guest_agent: Option<bool>,
    /// "agent" (default: the guest agent is /sbin/init, PID 1) or "distro" (the image's own
    /// /sbin/init — systemd, OpenRC, busybox init — stays PID 1 and runs the agent as a service).
    #[schemars(with = "Option<InitSchema>")]
    pub init: Option<Spanned<String>>,
    /// Run the image's Entrypoint/Cmd as a service the guest agent supervises (needs an
    /// image rootfs; default false).
    #[schemars(with = "Option<bool>")]
    pub run_image_cmd: Option<Spanned<bool>>,
    /// Files to write into the image: path = text, or { source | content, mode }.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, OverlaySchema>")]
    pub files: BTreeMap<Spanned<String>, Spanned<RawOverlay>>,
    /// Start new QEMU VMs of this template (root = { template = … }, no data drives) from a
    /// snapshot of one booted VM instead of booting each (default false; docs/snapshots.md).
    pub warm: Option<bool>,
    /// Only on these hosts (matched against `--host`, default the machine's hostname);
    /// default: the file's `[fort] hosts`, else every host.
    #[schemars(with = "Option<Vec<String>>")]
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    /// IPv4 network, e.g. "10.77.0.0/24"; its first address is the gateway.
    #[schemars(with = "String")]
    pub cidr: Spanned<String>,
    /// Masquerade traffic leaving the host (default false).
    pub nat: Option<bool>,
    /// VMs cannot reach each other at L2 (default false).
    pub isolated: Option<bool>,
    /// "from-host" (default) or a list of server addresses.
    #[schemars(with = "Option<DnsSchema>")]
    pub dns: Option<Spanned<RawDns>>,
    /// What guests may reach: "internet" (public addresses only; the default with NAT),
    /// "none" (nothing; the default without NAT) or "all".
    #[schemars(with = "Option<String>")]
    pub egress: Option<Spanned<String>>,
    /// Destinations guests may reach anyway: "CIDR[:PORT[-PORT]][/tcp|/udp]".
    #[schemars(with = "Option<Vec<String>>")]
    pub allow: Option<Vec<Spanned<String>>>,
    /// Destinations guests may never reach (wins over allow), same syntax.
    #[schemars(with = "Option<Vec<String>>")]
    pub deny: Option<Vec<Spanned<String>>>,
    /// Host ports guests may connect to: "PORT[-PORT][/tcp|/udp]" (e.g. "53/udp").
    #[schemars(with = "Option<Vec<String>>")]
    pub host_ports: Option<Vec<Spanned<String>>>,
    /// Only on these hosts (matched against `--host`, default the machine's hostname);
    /// default: the file's `[fort] hosts`, else every host.
    #[schemars(with = "Option<Vec<String>>")]
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDrive {
    /// Clone this template's image (else an empty ext4 drive).
    #[schemars(with = "Option<String>")]
    pub template: Option<Spanned<String>>,
    /// Size, e.g. "4GiB"; a clone is grown to it, never shrunk.
    #[schemars(with = "SizeSchema")]
    pub size: Spanned<RawSize>,
    /// Never destroy or replace without --allow-data-loss (default false).
    pub protect: Option<bool>,
    /// Only on these hosts (matched against `--host`, default the machine's hostname);
    /// default: the file's `[fort] hosts`, else every host.
    #[schemars(with = "Option<Vec<String>>")]
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawVmm {
    Firecracker,
    Qemu,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawVmState {
    Running,
    Stopped,
    /// vCPUs stopped, memory kept.
    Paused,
    /// A full snapshot on disk, the VMM gone.
    Suspended,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RawRestart {
    OnFailure,
    Always,
    Never,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawVm {
    /// "firecracker" (default) or "qemu".
    #[schemars(with = "Option<RawVmm>")]
    pub vmm: Option<Spanned<RawVmm>>,
    /// Which [firecracker.*] asset to run (needed when several are declared).
    #[schemars(with = "Option<String>")]
    pub firecracker: Option<Spanned<String>>,
    #[schemars(with = "String")]
    pub kernel: Spanned<String>,
    /// A drive name, or { template, size } for a drive of its own.
    #[schemars(with = "RootSchema")]
    pub root: Spanned<RawRoot>,
    /// Data drives: a drive name (attached, not mounted), or { drive, mount, options } for a
    /// drive the guest agent mounts at boot.
    #[schemars(with = "Option<Vec<DataDriveSchema>>")]
    pub drives: Option<Vec<Spanned<RawDataDrive>>>,
    /// 1 or an even number (default 1).
    #[schemars(with = "Option<u32>")]
    pub vcpus: Option<Spanned<i64>>,
    /// Memory, e.g. "1GiB" (default "512MiB").
    #[schemars(with = "Option<SizeSchema>")]
    pub memory: Option<Spanned<RawSize>>,
    #[schemars(with = "Option<String>")]
    pub network: Option<Spanned<String>>,
    /// A fixed IPv4 address in the network (default: allocated).
    #[schemars(with = "Option<String>")]
    pub ip: Option<Spanned<String>>,
    /// A fixed MAC address (default: allocated).
    #[schemars(with = "Option<String>")]
    pub mac: Option<Spanned<String>>,
    pub state: Option<RawVmState>,
    pub restart: Option<RawRestart>,
    /// Make a pool: NAME-0 … NAME-(count-1).
    #[schemars(with = "Option<u32>")]
    pub count: Option<Spanned<i64>>,
    /// Published ports: "[ADDRESS:]HOST_PORT[-PORT]:GUEST_PORT[-PORT][/tcp|/udp]" (tcp by
    /// default), e.g. "8080:80", "127.0.0.1:2222:22/tcp"; a pool gives a host range with a
    /// port per instance ("8000-8009:80").
    #[schemars(with = "Option<Vec<String>>")]
    pub ports: Option<Vec<Spanned<String>>>,
    /// How many checkpoints (`fort snapshot vm.NAME`) to keep: after a new one, the oldest
    /// beyond this are removed (1 to 1000; default: all are kept).
    #[schemars(with = "Option<u32>")]
    pub keep: Option<Spanned<i64>>,
    /// Only on these hosts (matched against `--host`, default the machine's hostname);
    /// default: the file's `[fort] hosts`, else every host.
    #[schemars(with = "Option<Vec<String>>")]
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A size: a string with a binary unit, or a number of bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawSize {
    Bytes(i64),
    Text(String),
}

/// `root = "drive"` or `root = { template = "t", size = "2GiB" }`.
#[derive(Debug)]
pub enum RawRoot {
    Drive(String),
    Inline(RawInlineRoot),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInlineRoot {
    pub template: Spanned<String>,
    pub size: Spanned<RawSize>,
}

/// A VM's data drive: `"scratch"` (attached only) or `{ drive = "data", mount = "/data" }`.
#[derive(Debug)]
pub enum RawDataDrive {
    Name(String),
    Mounted(RawMount),
}

impl RawDataDrive {
    pub fn name(&self) -> &str {
        match self {
            RawDataDrive::Name(n) => n,
            RawDataDrive::Mounted(m) => m.drive.get_ref(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMount {
    pub drive: Spanned<String>,
    pub mount: Spanned<String>,
    pub options: Option<Spanned<String>>,
}

/// An overlay file: inline text, or a table.
#[derive(Debug)]
pub enum RawOverlay {
    Text(String),
    Table(RawOverlayTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverlayTable {
    pub source: Option<Spanned<String>>,
    pub content: Option<String>,
    pub mode: Option<Spanned<String>>,
}

#[derive(Debug)]
pub enum RawDns {
    Text(String),
    List(Vec<String>),
}

// Schema-only mirrors of the types above that deserialize by hand.

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum SizeSchema {
    /// Bytes.
    Bytes(u64),
    /// e.g. "512MiB", "4GiB".
    #[schemars(regex(pattern = r"^[0-9]+ ?(B|KiB|MiB|GiB|TiB)?$"))]
    Text(String),
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum TemplateSizeSchema {
    /// Bytes.
    Bytes(u64),
    /// e.g. "512MiB", "4GiB", or "auto".
    #[schemars(regex(pattern = r"^([0-9]+ ?(B|KiB|MiB|GiB|TiB)?|auto)$"))]
    Text(String),
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum InitSchema {
    /// fort's guest agent is /sbin/init (PID 1).
    Agent,
    /// The image's own init stays PID 1; the agent runs as its service.
    Distro,
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum RootSchema {
    Drive(String),
    Inline {
        template: String,
        #[schemars(with = "SizeSchema")]
        size: String,
    },
}

#[derive(JsonSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub(super) struct InlineRootSchema {
    template: String,
    #[schemars(with = "SizeSchema")]
    size: String,
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum DataDriveSchema {
    /// A drive attached to the VM and not mounted.
    Drive(String),
    /// A drive the guest agent mounts (ext4) at boot.
    Mounted(MountSchema),
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct MountSchema {
    drive: String,
    /// Absolute path in the guest, e.g. "/data" (not "/", no "..").
    mount: String,
    /// Mount options, comma-separated, e.g. "ro,noatime" (default "rw").
    #[schemars(regex(pattern = r"^[a-z0-9_=.-]+(,[a-z0-9_=.-]+)*$"))]
    options: Option<String>,
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum OverlaySchema {
    Text(String),
    Table {
        source: Option<String>,
        content: Option<String>,
        /// Octal, e.g. "0755".
        mode: Option<String>,
    },
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum DnsSchema {
    /// "from-host"
    FromHost(String),
    Servers(Vec<String>),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size such as \"512MiB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawRoot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRoot;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a drive name or { template = \"…\", size = \"…\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawRoot, E> {
                Ok(RawRoot::Drive(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRoot, A::Error> {
                RawInlineRoot::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawRoot::Inline)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawDataDrive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDataDrive;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a drive name or { drive = \"…\", mount = \"/…\", options = \"…\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDataDrive, E> {
                Ok(RawDataDrive::Name(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawDataDrive, A::Error> {
                RawMount::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawDataDrive::Mounted)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawOverlay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawOverlay;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("file text, or { source = \"…\" | content = \"…\", mode = \"0644\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawOverlay, E> {
                Ok(RawOverlay::Text(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawOverlay, A::Error> {
                RawOverlayTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawOverlay::Table)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawDns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDns;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"from-host\" or a list of addresses")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDns, E> {
                Ok(RawDns::Text(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawDns, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(RawDns::List(out))
            }
        }
        d.deserialize_any(V)
    }
}
