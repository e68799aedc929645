//! Manifest validation, table-driven: each case is a small manifest and the exact error text
//! (every diagnostic, `FILE:LINE:COL: message`) or the resources it resolves to.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use fort::manifest::{self, Decompress, Dns, OverlayContent, RootfsSpec, Spec};
use fort::{Address, Kind};

use common::manifests::{base, load, load_many};

const SHA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const KEY: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";

#[test]
fn errors() {
    let cases: Vec<(String, &str)> = vec![
        // Syntax, types and unknown keys come from the TOML layer, with positions.
        ("[kernel.k]\nurl = \"/x\"\nsha265 = \"a\"\n".into(),
         "fort.toml:5:1: unknown field `sha265`, expected one of `url`, `sha256`, `sha256_url`, `minisign`, `decompress`, `cmdline`, `initrd`, `hosts`"),
        ("[kernel.k]\nurl = 5\n".into(),
         "fort.toml:4:7: invalid type: integer `5`, expected a string"),
        ("[kernel.k\nurl = \"/x\"\n".into(),
         "fort.toml:3:10: unclosed table, expected `]`"),
        ("[kernel.k]\n".into(),
         "fort.toml:3:1: missing field `url`"),
        ("[vmm.x]\n".into(),
         "fort.toml:3:2: unknown field `vmm`, expected one of `fort`, `firecracker`, `kernel`, `rootfs`, `template`, `network`, `drive`, `vm`, `sandbox`, `instance`"),
        ("[vm.a]\nkernel = \"k\"\nroot = \"d\"\nstate = \"asleep\"\n".into(),
         "fort.toml:6:9: unknown variant `asleep`, expected one of `running`, `stopped`, `paused`, `suspended`"),
        ("[network.n]\ncidr = \"10.0.0.0/24\"\nnat = \"yes\"\n".into(),
         "fort.toml:5:7: invalid type: string \"yes\", expected a boolean"),
        // Names.
        ("[kernel.Lts]\nurl = \"/x\"\n".into(),
         "fort.toml:3:9: kernel.Lts: invalid name `Lts`: names are 1 to 31 characters of a-z, 0-9 and '-', starting with a letter or digit"),
        (format!("[kernel.{}]\nurl = \"/x\"\n", "k".repeat(32)),
         "fort.toml:3:9: kernel.kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk: invalid name `kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk`: names are 1 to 31 characters of a-z, 0-9 and '-', starting with a letter or digit"),
        ("[kernel.-k]\nurl = \"/x\"\n".into(),
         "fort.toml:3:9: kernel.-k: invalid name `-k`: names are 1 to 31 characters of a-z, 0-9 and '-', starting with a letter or digit"),
        // Assets.
        ("[kernel.k]\nurl = \"https://example.org/vmlinux\"\n".into(),
         "fort.toml:4:7: kernel.k: a remote url must be verified: add `sha256 = \"…\"` or `sha256_url = \"…\"`"),
        (format!("[kernel.k]\nurl = \"https://e.org/v\"\nsha256 = \"{SHA}\"\nsha256_url = \"https://e.org/SUMS\"\n"),
         "fort.toml:6:14: kernel.k: set `sha256` or `sha256_url`, not both"),
        ("[rootfs.r]\nurl = \"/x\"\nsha256 = \"abc123\"\n".into(),
         "fort.toml:5:10: rootfs.r: invalid sha256 `abc123`: expected 64 hexadecimal characters, got 6"),
        ("[rootfs.r]\nurl = \"ftp://e.org/r.tar\"\n".into(),
         "fort.toml:4:7: rootfs.r: url `ftp://e.org/r.tar`: expected an https://, http:// or file:// URL, or a path"),
        ("[rootfs.r]\nurl = \"file://relative/r.tar\"\n".into(),
         "fort.toml:4:7: rootfs.r: url `file://relative/r.tar`: a file:// URL needs an absolute path (file:///…); use a plain relative path instead"),
        ("[kernel.k]\nurl = \"/x\"\nminisign = { public_key = \"RWQnotakey\", signature_url = \"/x.minisig\" }\n".to_string(),
         "fort.toml:5:27: kernel.k: invalid minisign public_key `RWQnotakey`: expected the base64 key from the second line of a minisign .pub file (56 characters starting with RW)"),
        ("[kernel.k]\nurl = \"/x\"\ninitrd = { url = \"http://e.org/initrd.gz\" }\n".into(),
         "fort.toml:5:18: kernel.k: initrd: a remote url must be verified: add `sha256 = \"…\"` or `sha256_url = \"…\"`"),
        // Sizes.
        ("[rootfs.r]\nurl = \"/r\"\n[template.t]\nrootfs = \"r\"\nsize = \"4GB\"\n".into(),
         "fort.toml:7:8: template.t: size: invalid size `4GB`: expected a number with a binary unit (B, KiB, MiB, GiB, TiB), e.g. \"512MiB\", or a number of bytes"),
        // A drive's size is required (docs/manifest.md says so, with this message).
        ("[drive.d]\nprotect = true\n".into(),
         "fort.toml:3:1: missing field `size`"),
        ("[drive.d]\nsize = 0\n".into(),
         "fort.toml:4:8: drive.d: size: size must be greater than 0"),
        ("[drive.d]\nsize = \"-1GiB\"\n".into(),
         "fort.toml:4:8: drive.d: size: invalid size `-1GiB`: expected a number with a binary unit (B, KiB, MiB, GiB, TiB), e.g. \"512MiB\", or a number of bytes"),
        ("[rootfs.r]\nurl = \"/r\"\n[template.t]\nrootfs = \"r\"\nsize = \"512KiB\"\n".into(),
         "fort.toml:7:8: template.t: size: an image needs at least 1MiB, got 512KiB"),
        ("[rootfs.r]\nurl = \"/r\"\n[template.t]\nrootfs = \"r\"\nsize = \"automatic\"\n".into(),
         "fort.toml:7:8: template.t: size: invalid size `automatic`: expected a number with a binary unit (B, KiB, MiB, GiB, TiB), e.g. \"512MiB\", or a number of bytes"),
        // Init modes.
        ("[rootfs.r]\nurl = \"/r\"\n[template.t]\nrootfs = \"r\"\nsize = \"auto\"\ninit = \"systemd\"\n".into(),
         "fort.toml:8:8: template.t: init: expected \"agent\" or \"distro\", got \"systemd\""),
        ("[rootfs.r]\nurl = \"/r\"\n[template.t]\nrootfs = \"r\"\nsize = \"1GiB\"\nguest_agent = false\ninit = \"distro\"\n".into(),
         "fort.toml:9:8: template.t: init = \"distro\" runs the guest agent as a service of the image's init, so it needs guest_agent = true (guest_agent = false already leaves /sbin/init alone)"),
        // Networks.
        ("[network.n]\ncidr = \"10.0.0.0/33\"\n".into(),
         "fort.toml:4:8: network.n: invalid cidr `10.0.0.0/33`: expected an IPv4 network such as \"10.77.0.0/24\""),
        ("[network.n]\ncidr = \"10.0.0.5/24\"\n".into(),
         "fort.toml:4:8: network.n: cidr `10.0.0.5/24` has host bits set: did you mean \"10.0.0.0/24\"?"),
        ("[network.n]\ncidr = \"10.0.0.0/31\"\n".into(),
         "fort.toml:4:8: network.n: cidr `10.0.0.0/31` leaves no room for a gateway and VMs: use a prefix of /30 or shorter"),
        ("[network.a]\ncidr = \"10.0.0.0/16\"\n[network.b]\ncidr = \"10.0.5.0/24\"\n".into(),
         "fort.toml:6:8: network.b: cidr 10.0.5.0/24 overlaps network.a (10.0.0.0/16)"),
        ("[network.agents-net1]\ncidr = \"10.0.0.0/24\"\n".into(),
         "fort.toml:3:10: network.agents-net1: its bridge would be named `fort-agents-net1` (16 bytes) but Linux interface names have at most 15: use a network name of at most 10 characters"),
        // Egress policy: each bad entry named, with what was expected.
        ("[network.n]\ncidr = \"10.0.0.0/24\"\negress = \"open\"\n".into(),
         "fort.toml:5:10: network.n: egress must be \"internet\", \"none\" or \"all\", got \"open\""),
        ("[network.n]\ncidr = \"10.0.0.0/24\"\nallow = [\"10.0.5.1/24\"]\n".into(),
         "fort.toml:5:10: network.n: allow entry `10.0.5.1/24`: `10.0.5.1/24` has host bits set: did you mean 10.0.5.0/24?"),
        ("[network.n]\ncidr = \"10.0.0.0/24\"\ndeny = [\"8.8.8.8:70000/udp\"]\n".into(),
         "fort.toml:5:9: network.n: deny entry `8.8.8.8:70000/udp`: the port 70000 is outside 1-65535"),
        ("[network.n]\ncidr = \"10.0.0.0/24\"\nhost_ports = [\"53/icmp\"]\n".into(),
         "fort.toml:5:15: network.n: host_ports entry `53/icmp`: protocol `icmp` is not tcp or udp (leave it out for both)"),
        ("[network.n]\ncidr = \"10.0.0.0/24\"\nallow = [\"1.2.3.4\", \"1.2.3.4/32\"]\n".into(),
         "fort.toml:5:21: network.n: allow lists `1.2.3.4/32` twice"),
        ("[network.n]\ncidr = \"10.0.0.0/24\"\ndns = \"google\"\n".into(),
         "fort.toml:5:7: network.n: dns must be \"from-host\" or a list of addresses, got \"google\""),
        ("[network.n]\ncidr = \"10.0.0.0/24\"\ndns = [\"1.1.1.1\", \"one\"]\n".into(),
         "fort.toml:5:7: network.n: invalid dns server address `one`"),
        // References.
        (base("[vm.a]\nkernel = \"k2\"\nroot = { template = \"t\", size = \"2GiB\" }\n"),
         "fort.toml:13:10: vm.a: kernel `k2` is not defined (defined: k)"),
        (base("[vm.a]\nkernel = \"k\"\nroot = \"nope\"\n"),
         "fort.toml:14:8: vm.a: drive `nope` is not defined (no drive is defined)"),
        (base("[vm.a]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"wan\"\n"),
         "fort.toml:15:11: vm.a: network `wan` is not defined (defined: lan)"),
        ("[template.t]\nrootfs = \"alpine\"\nsize = \"1GiB\"\n".into(),
         "fort.toml:4:10: template.t: rootfs `alpine` is not defined (no rootfs is defined)"),
        ("[drive.d]\ntemplate = \"t\"\nsize = \"1GiB\"\n".into(),
         "fort.toml:4:12: drive.d: template `t` is not defined (no template is defined)"),
        (base("[drive.d]\nsize = \"1GiB\"\n[vm.a]\nkernel = \"k\"\nroot = \"d\"\n[vm.b]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\ndrives = [\"d\"]\n"),
         "fort.toml:20:11: vm.b: drive.d is already used by vm.a"),
        // Firecracker choice.
        (base("[firecracker.a]\nurl = \"/fc\"\n[firecracker.b]\nurl = \"/fc2\"\n[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\n"),
         "fort.toml:16:5: vm.x: several [firecracker.*] assets are declared (a, b): choose one with `firecracker = \"…\"`"),
        ("[firecracker.fc]\nurl = \"https://example.org/firecracker\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\njailer_member = \"release/jailer\"\n".into(),
         "fort.toml:6:17: firecracker.fc: jailer_member needs `member`: the jailer comes from the same release archive as the firecracker binary"),
        (base("[vm.x]\nfirecracker = \"v1\"\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\n"),
         "fort.toml:13:15: vm.x: firecracker `v1` is not defined (no firecracker is defined)"),
        // VM values.
        (base("[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nvcpus = 3\n"),
         "fort.toml:15:9: vm.x: vcpus must be 1 or an even number up to 32, got 3"),
        (base("[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nmemory = \"64MiB\"\n"),
         "fort.toml:15:10: vm.x: memory must be at least 128MiB, got 64MiB"),
        (base("[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nip = \"10.88.0.5\"\n"),
         "fort.toml:16:6: vm.x: ip 10.88.0.5 is outside the network 10.77.0.0/24"),
        (base("[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nip = \"10.77.0.1\"\n"),
         "fort.toml:16:6: vm.x: ip 10.77.0.1 is the network's gateway (the bridge)"),
        (base("[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nip = \"10.77.0.9\"\n"),
         "fort.toml:15:6: vm.x: `ip` needs `network`"),
        (base("[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nip = \"10.77.0.9\"\n[vm.y]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nip = \"10.77.0.9\"\n"),
         "fort.toml:21:6: vm.y: ip 10.77.0.9 is already used by vm.x"),
        // Published ports.
        (base("[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nports = [\"8080\"]\n"),
         "fort.toml:16:10: vm.x: ports entry `8080`: expected [ADDRESS:]HOST_PORT:GUEST_PORT[/tcp|/udp], such as \"8080:80\""),
        (base("[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nports = [\"8080:0\", \"70000:80\"]\n"),
         "fort.toml:16:10: vm.x: ports entry `8080:0`: the guest port 0 is outside 1-65535\n\
          fort.toml:16:20: vm.x: ports entry `70000:80`: the host port 70000 is outside 1-65535"),
        (base("[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nports = [\"8080:80/icmp\"]\n"),
         "fort.toml:16:10: vm.x: ports entry `8080:80/icmp`: protocol `icmp` is not tcp or udp"),
        (base("[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nports = [\"localhost:8080:80\"]\n"),
         "fort.toml:16:10: vm.x: ports entry `localhost:8080:80`: `localhost` is not an IPv4 address such as 127.0.0.1"),
        (base("[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nports = [\"8000-8009:80\"]\n"),
         "fort.toml:16:10: vm.x: ports entry `8000-8009:80`: 10 host ports but 1 guest port: give as many of each"),
        (base("[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nports = [\"8080:80\", \"127.0.0.1:8080:81\"]\n"),
         "fort.toml:16:21: vm.x: ports entry `127.0.0.1:8080:81`: host port 8080/tcp on 127.0.0.1 is already published by vm.x (`8080:80/tcp`)"),
        (base("[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nports = [\"8080:80\", \"8080:80/udp\"]\n[vm.y]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nports = [\"7000-8080:7000-8080/udp\"]\n"),
         "fort.toml:21:10: vm.y: ports entry `7000-8080:7000-8080/udp`: host port 7000-8080/udp is already published by vm.x (`8080:80/udp`)"),
        (base("[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nports = [\"8080:80\"]\n"),
         "fort.toml:15:10: vm.x: `ports` needs `network`"),
        (base("[vm.w]\ncount = 3\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nports = [\"8080:80\"]\n"),
         "fort.toml:17:10: vm.w: ports entry `8080:80`: a pool (count = 3) cannot publish one fixed host port for all its instances: give a range with a port per instance, e.g. \"8080-8082:80\""),
        (base("[vm.w]\ncount = 3\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nports = [\"8000-8001:80\"]\n"),
         "fort.toml:17:10: vm.w: ports entry `8000-8001:80`: the host range has 2 ports but the pool has 3 instances"),
        (base("[vm.w]\ncount = 3\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nports = [\"8000-8002:80-82\"]\n"),
         "fort.toml:17:10: vm.w: ports entry `8000-8002:80-82`: a pool maps one host port per instance to one guest port: give a single guest port"),
        (base("[vm.w]\ncount = 3\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nports = [\"8000-8009:80\"]\n[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nports = [\"8002:80\"]\n"),
         "fort.toml:22:10: vm.x: ports entry `8002:80`: host port 8002/tcp is already published by vm.w-2 (`8002:80/tcp`)"),
        (base("[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nmac = \"02:00:00:00:00:01\"\n[vm.y]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nmac = \"02:00:00:00:00:01\"\n"),
         "fort.toml:19:7: vm.y: mac 02:00:00:00:00:01 is already used by vm.x"),
        (base("[vm.x]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nmac = \"01:00:5e:00:00:01\"\n"),
         "fort.toml:15:7: vm.x: invalid mac `01:00:5e:00:00:01`: expected a unicast address such as \"02:fc:00:00:00:01\""),
        // Pools.
        (base("[vm.w]\ncount = 300\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\n"),
         "fort.toml:11:8: network.lan: 10.77.0.0/24 has room for 253 VMs but 300 are attached (vm.w ×300)"),
        (base("[vm.w]\ncount = 0\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\n"),
         "fort.toml:13:9: vm.w: count must be between 1 and 1000, got 0"),
        (base("[vm.w]\nkeep = 0\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\n"),
         "fort.toml:13:8: vm.w: keep must be between 1 and 1000 (checkpoints kept), got 0"),
        (base("[drive.d]\nsize = \"1GiB\"\n[vm.w]\ncount = 2\nkernel = \"k\"\nroot = \"d\"\n"),
         "fort.toml:17:8: vm.w: a pool (count) needs a root drive per instance: use root = { template = \"…\", size = \"…\" }"),
        (base("[vm.w]\ncount = 2\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nip = \"10.77.0.9\"\nnetwork = \"lan\"\n"),
         "fort.toml:16:6: vm.w: `ip` cannot be set on a pool (count): addresses are allocated per instance"),
        // Every instance whose TAP name is too long, in instance order (not only the longest).
        (base("[vm.agentsvm]\ncount = 12\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\n"),
         "fort.toml:13:9: vm.agentsvm-10: its TAP would be named `fort-agentsvm-10` (16 bytes) but Linux interface names have at most 15: use a VM name of at most 10 characters (including a pool's -N suffix)\n\
          fort.toml:13:9: vm.agentsvm-11: its TAP would be named `fort-agentsvm-11` (16 bytes) but Linux interface names have at most 15: use a VM name of at most 10 characters (including a pool's -N suffix)"),
        (base("[vm.agentpool]\ncount = 3\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\n"),
         "fort.toml:13:9: vm.agentpool-0: its TAP would be named `fort-agentpool-0` (16 bytes) but Linux interface names have at most 15: use a VM name of at most 10 characters (including a pool's -N suffix)\n\
          fort.toml:13:9: vm.agentpool-1: its TAP would be named `fort-agentpool-1` (16 bytes) but Linux interface names have at most 15: use a VM name of at most 10 characters (including a pool's -N suffix)\n\
          fort.toml:13:9: vm.agentpool-2: its TAP would be named `fort-agentpool-2` (16 bytes) but Linux interface names have at most 15: use a VM name of at most 10 characters (including a pool's -N suffix)"),
        (base("[vm.agents-solo]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\n"),
         "fort.toml:12:5: vm.agents-solo: its TAP would be named `fort-agents-solo` (16 bytes) but Linux interface names have at most 15: use a VM name of at most 10 characters (including a pool's -N suffix)"),
        (base("[vm.w]\ncount = 2\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\n[drive.w-1-root]\nsize = \"1GiB\"\n"),
         "fort.toml:15:8: vm.w-1: its inline root drive.w-1-root is also defined at fort.toml:16:1"),
        (base("[vm.w]\ncount = 2\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\n[vm.w-0]\nkernel = \"k\"\nroot = { template = \"t\", size = \"1GiB\" }\n"),
         "fort.toml:13:9: vm.w: pool instance vm.w-0 is also defined at fort.toml:16:1"),
        (base("[vm.lan]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\n"),
         "fort.toml:12:5: vm.lan and network.lan would both use the interface name `fort-lan`: rename one"),
        // Overlays.
        ("[rootfs.r]\nurl = \"/r\"\n[template.t]\nrootfs = \"r\"\nsize = \"1GiB\"\n[template.t.files]\n\"etc/motd\" = \"hi\"\n".into(),
         "fort.toml:9:1: template.t: overlay path `etc/motd` must be an absolute path inside the image without `..`, e.g. \"/etc/motd\""),
        ("[rootfs.r]\nurl = \"/r\"\n[template.t]\nrootfs = \"r\"\nsize = \"1GiB\"\n[template.t.files]\n\"/x\" = { source = \"no/such/file.sh\" }\n".into(),
         "fort.toml:9:19: template.t: overlay source `no/such/file.sh` cannot be read (CWD/no/such/file.sh): No such file or directory (os error 2)"),
        // Found while writing the manifest fuzz target (reproduced with it: out of memory):
        // a device was read to its end, which /dev/zero does not have.
        ("[rootfs.r]\nurl = \"/r\"\n[template.t]\nrootfs = \"r\"\nsize = \"1GiB\"\n[template.t.files]\n\"/x\" = { source = \"/dev/zero\" }\n".into(),
         "fort.toml:9:19: template.t: overlay source `/dev/zero` cannot be read (/dev/zero): not a regular file"),
        ("[rootfs.r]\nurl = \"/r\"\n[template.t]\nrootfs = \"r\"\nsize = \"1GiB\"\n[template.t.files]\n\"/x\" = { mode = \"0755\" }\n".into(),
         "fort.toml:9:8: template.t: overlay `/x` needs exactly one of `source` or `content`"),
        ("[rootfs.r]\nurl = \"/r\"\n[template.t]\nrootfs = \"r\"\nsize = \"1GiB\"\n[template.t.files]\n\"/x\" = { content = \"a\", mode = \"rwx\" }\n".into(),
         "fort.toml:9:32: template.t: invalid mode `rwx`: expected octal permission bits such as \"0644\" or \"0755\""),
        // Several errors at once, in file order.
        ("[drive.a]\nsize = \"1XB\"\n[drive.b]\ntemplate = \"none\"\nsize = \"1GiB\"\n".into(),
         "fort.toml:4:8: drive.a: size: invalid size `1XB`: expected a number with a binary unit (B, KiB, MiB, GiB, TiB), e.g. \"512MiB\", or a number of bytes\nfort.toml:6:12: drive.b: template `none` is not defined (no template is defined)"),
    ];
    let cwd = std::env::current_dir().unwrap();
    let mut failures = Vec::new();
    for (body, want) in &cases {
        if want.is_empty() {
            continue;
        }
        let want = want.replace("CWD", &cwd.display().to_string());
        match load(body) {
            Ok(_) => failures.push(format!("expected an error for:\n{body}\nwant: {want}\n")),
            Err(got) if got != want => {
                failures.push(format!("for:\n{body}\n got: {got}\nwant: {want}\n"))
            }
            Err(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn fort_table_rules() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("a.toml", "[kernel.k]\nurl = \"/x\"\n")], "a.toml:1:1: missing [fort] table: a manifest needs `[fort]` with `version = 1` in one of its files"),
        (&[("a.toml", "[fort]\nversion = 2\n")], "a.toml:2:11: unsupported manifest version 2: this fort reads version 1"),
        (&[("a.toml", "[fort]\n")], "a.toml:1:1: missing field `version`"),
        (&[("a.toml", "[fort]\nversion = 1\n"), ("b.toml", "\n[fort]\nversion = 1\n")], "b.toml:2:1: [fort] is defined twice: a.toml:1:1 and b.toml:2:1"),
        (
            &[("a.toml", "[fort]\nversion = 1\n\n[kernel.lts]\nurl = \"/x\"\n"), ("b.toml", "[kernel.lts]\nurl = \"/y\"\n")],
            "b.toml:1:1: kernel.lts is defined twice: a.toml:4:1 and b.toml:1:1",
        ),
    ];
    for (files, want) in cases {
        assert_eq!(load_many(files).unwrap_err(), *want);
    }
}

#[test]
fn resolution() {
    let m = load(&base(&format!(
            "[kernel.gz]\nurl = \"https://e.org/vmlinux.gz\"\nsha256_url = \"SHA256SUMS\"\nminisign = {{ public_key = \"{KEY}\", signature_url = \"https://e.org/vmlinux.gz.minisig\" }}\n\
             [rootfs.tgz]\nurl = \"https://e.org/r.tar.gz\"\nsha256 = \"{}\"\n\
             [firecracker.fc]\nurl = \"https://e.org/fc.tgz\"\nsha256 = \"{SHA}\"\nmember = \"release/firecracker\"\n\
             [drive.data]\nsize = 1048576\nprotect = true\n\
             [vm.solo]\nkernel = \"k\"\nroot = {{ template = \"t\", size = \"2GiB\" }}\ndrives = [\"data\"]\nnetwork = \"lan\"\nvcpus = 2\nmemory = \"1GiB\"\nip = \"10.77.0.10\"\nmac = \"02:AA:00:00:00:01\"\n\
             [vm.w]\ncount = 3\nvmm = \"qemu\"\nkernel = \"k\"\nroot = {{ template = \"t\", size = \"1GiB\" }}\nstate = \"stopped\"\nrestart = \"never\"\n",
            SHA.to_uppercase()
        )))
    .unwrap();
    let names: Vec<String> = m.resources.keys().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "firecracker.fc",
            "kernel.gz",
            "kernel.k",
            "rootfs.r",
            "rootfs.tgz",
            "template.t",
            "network.lan",
            "drive.data",
            "drive.solo-root",
            "drive.w-0-root",
            "drive.w-1-root",
            "drive.w-2-root",
            "vm.solo",
            "vm.w-0",
            "vm.w-1",
            "vm.w-2",
        ]
    );
    let get = |a: &str| &m.resources[&a.parse::<Address>().unwrap()];
    let deps = |a: &str| {
        get(a)
            .deps
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        deps("vm.solo"),
        [
            "firecracker.fc",
            "kernel.k",
            "network.lan",
            "drive.data",
            "drive.solo-root"
        ]
    );
    assert_eq!(
        deps("vm.w-1"),
        ["kernel.k", "drive.w-1-root"],
        "qemu VMs do not need the firecracker asset"
    );
    assert_eq!(deps("drive.w-1-root"), ["template.t"]);
    assert_eq!(deps("template.t"), ["rootfs.r"]);

    let cwd = std::env::current_dir().unwrap();
    match &get("kernel.k").spec {
        Spec::Kernel(k) => {
            assert_eq!(k.source.url, "file:///boot/vmlinux");
            assert_eq!(k.source.decompress, Decompress::None);
            assert_eq!(k.cmdline, "console=ttyS0 reboot=k panic=1");
        }
        s => panic!("{s:?}"),
    }
    match &get("kernel.gz").spec {
        Spec::Kernel(k) => {
            assert_eq!(k.source.decompress, Decompress::Gzip);
            assert_eq!(
                k.source.sha256_url.as_deref(),
                Some(format!("file://{}/SHA256SUMS", cwd.display()).as_str())
            );
            assert_eq!(k.source.minisign.as_ref().unwrap().public_key, KEY);
        }
        s => panic!("{s:?}"),
    }
    match &get("rootfs.tgz").spec {
        Spec::Rootfs(RootfsSpec::Tarball { source }) => {
            assert_eq!(
                source.decompress,
                Decompress::None,
                "tarballs are kept as fetched"
            );
            assert_eq!(source.sha256.as_deref(), Some(SHA));
        }
        s => panic!("{s:?}"),
    }
    match &get("rootfs.r").spec {
        Spec::Rootfs(RootfsSpec::Tarball { source }) => {
            assert_eq!(source.url, "file:///srv/r.tar")
        }
        s => panic!("{s:?}"),
    }
    match &get("firecracker.fc").spec {
        Spec::Firecracker(f) => {
            assert_eq!(f.source.decompress, Decompress::Gzip);
            assert_eq!(f.member.as_deref(), Some("release/firecracker"));
        }
        s => panic!("{s:?}"),
    }
    match &get("network.lan").spec {
        Spec::Network(n) => {
            assert_eq!(n.gateway.to_string(), "10.77.0.1");
            assert_eq!(n.bridge, "fort-lan");
            assert_eq!(n.dns, Dns::FromHost);
            assert!(!n.nat && !n.isolated);
        }
        s => panic!("{s:?}"),
    }
    match &get("vm.solo").spec {
        Spec::Vm(v) => {
            assert_eq!((v.vcpus, v.memory), (2, 1 << 30));
            assert_eq!(v.ip.map(|i| i.to_string()).as_deref(), Some("10.77.0.10"));
            assert_eq!(v.mac.as_deref(), Some("02:aa:00:00:00:01"));
            assert_eq!(v.tap.as_deref(), Some("fort-solo"));
            assert_eq!(v.firecracker.as_deref(), Some("fc"));
            assert_eq!(v.root, "solo-root");
        }
        s => panic!("{s:?}"),
    }
    match &get("vm.w-2").spec {
        Spec::Vm(v) => {
            assert_eq!(
                v.pool.as_ref().map(|p| (p.pool.as_str(), p.index)),
                Some(("w", 2))
            );
            assert_eq!((v.vcpus, v.memory, v.tap.as_deref()), (1, 512 << 20, None));
            assert_eq!(v.root, "w-2-root");
        }
        s => panic!("{s:?}"),
    }
    match &get("drive.w-0-root").spec {
        Spec::Drive(d) => assert_eq!(
            (d.template.as_deref(), d.size, d.pool.as_deref()),
            (Some("t"), 1 << 30, Some("w"))
        ),
        s => panic!("{s:?}"),
    }
    match &get("drive.data").spec {
        Spec::Drive(d) => assert!(d.protect && d.size == 1 << 20),
        s => panic!("{s:?}"),
    }
    // Origins point at the table headers.
    assert_eq!(get("kernel.k").origin.to_string(), "fort.toml:3:1");
}

#[test]
fn directories_merge_their_toml_files_and_resolve_paths_per_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sub/files")).unwrap();
    std::fs::write(
        dir.path().join("00-fort.toml"),
        "[fort]\nversion = 1\nstate_dir = \"state\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("10-assets.toml"), "[rootfs.r]\nurl = \"images/r.tar\"\n[template.t]\nrootfs = \"r\"\nsize = \"8MiB\"\n[template.t.files]\n\"/etc/motd\" = \"hi\\n\"\n\"/bin/tool\" = { source = \"sub/files/tool.sh\", mode = \"0755\" }\n").unwrap();
    std::fs::write(dir.path().join("sub/files/tool.sh"), "#!/bin/sh\n").unwrap();
    std::fs::write(dir.path().join("README.md"), "not a manifest").unwrap();
    let m = manifest::load(dir.path()).unwrap();
    assert_eq!(m.files.len(), 2);
    assert_eq!(
        m.state_dir.as_deref(),
        Some(dir.path().join("state").as_path())
    );
    match &m.resources[&Address::new(Kind::Rootfs, "r")].spec {
        Spec::Rootfs(RootfsSpec::Tarball { source }) => assert_eq!(
            source.url,
            format!("file://{}/images/r.tar", dir.path().display())
        ),
        s => panic!("{s:?}"),
    }
    match &m.resources[&Address::new(Kind::Template, "t")].spec {
        Spec::Template(t) => {
            assert!(t.guest_agent);
            let tool = &t.files["/bin/tool"];
            assert_eq!(tool.mode, 0o755);
            match &tool.content {
                OverlayContent::Source { path, sha256 } => {
                    assert_eq!(path, &dir.path().join("sub/files/tool.sh"));
                    use sha2::Digest;
                    assert_eq!(sha256, &hex::encode(sha2::Sha256::digest(b"#!/bin/sh\n")));
                }
                c => panic!("{c:?}"),
            }
            assert_eq!(
                t.files["/etc/motd"].content,
                OverlayContent::Inline("hi\n".into())
            );
        }
        s => panic!("{s:?}"),
    }
    // Editing an overlay source changes the template's spec hash.
    let before = m.resources[&Address::new(Kind::Template, "t")]
        .spec_hash()
        .to_string();
    std::fs::write(
        dir.path().join("sub/files/tool.sh"),
        "#!/bin/sh\necho changed\n",
    )
    .unwrap();
    let after = manifest::load(dir.path()).unwrap().resources[&Address::new(Kind::Template, "t")]
        .spec_hash()
        .to_string();
    assert_ne!(before, after);

    let empty = tempfile::tempdir().unwrap();
    assert_eq!(
        manifest::load(empty.path()).unwrap_err().to_string(),
        format!("no *.toml files in directory {}", empty.path().display())
    );
    let missing = dir.path().join("nope.toml");
    assert_eq!(
        manifest::load(&missing).unwrap_err().to_string(),
        format!("cannot read manifest {}", missing.display())
    );
}

#[test]
fn every_example_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        if dir.is_dir() {
            let m = manifest::load(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            assert!(!m.resources.is_empty(), "{}", dir.display());
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "expected at least the assets-only and full examples"
    );
}
