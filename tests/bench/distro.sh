#!/usr/bin/env bash
# Benchmark: time to agent-ready (`boot_ms`, recorded by fort from VMM start to the agent's
# first answer) of a Debian bookworm VM with systemd as PID 1 (`init = "distro"`) vs the
# busybox VM with fort's agent as PID 1, both under QEMU/TCG, alternating in the same run.
# Then, in the Debian guest, where systemd's time went (`systemd-analyze` and `blame`).
# Runs in a fresh network namespace.
#
# Usage (root): tests/bench/distro.sh [RUNS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
if [ -z "${FORT_BENCH_IN_NETNS:-}" ]; then
  exec env FORT_BENCH_IN_NETNS=1 unshare -n "$0" "$@"
fi
ip link set lo up
cargo build --release --locked -p fort >/dev/null 2>&1 || cargo build --release --locked -p fort
FORT="$(scripts/cargo-target-dir)/release/fort"
FORT_GUEST_AGENT=$(scripts/build-agent 2>/dev/null)
export FORT_GUEST_AGENT
A=/var/cache/fort-assets
scripts/build-vm-assets "$A" 2>/dev/null
scripts/build-debian-rootfs "$A"

W=$(mktemp -d /tmp/fort-bench-distro.XXXXXX)
chmod 711 "$W"   # confined VMs run as their own uids, which must reach the state dir
trap '"$FORT" -f "$W" --state-dir "$W/state" destroy --yes >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
write() {  # write STATE_DEBIAN STATE_BUSYBOX
  { printf '[fort]\nversion = 1\n[kernel.k]\nurl = "%s/vmlinuz"\ninitrd = { url = "%s/initrd.cpio.gz" }\n' "$A" "$A"
    printf '[rootfs.debian]\nurl = "%s/debian-bookworm.tar"\n[template.deb]\nrootfs = "debian"\nsize = "auto"\ninit = "distro"\n' "$A"
    printf '[rootfs.bb]\nurl = "%s/rootfs.tar.gz"\n[template.bb]\nrootfs = "bb"\nsize = "128MiB"\n' "$A"
    printf '[network.lan]\ncidr = "10.77.0.0/24"\n'
    printf '[vm.deb]\nvmm = "qemu"\nkernel = "k"\nroot = { template = "deb", size = "1GiB" }\nmemory = "512MiB"\nnetwork = "lan"\nstate = "%s"\n' "$1"
    printf '[vm.bb]\nvmm = "qemu"\nkernel = "k"\nroot = { template = "bb", size = "256MiB" }\nmemory = "512MiB"\nnetwork = "lan"\nstate = "%s"\n' "$2"
  } > "$W/fort.toml"
}
f() { "$FORT" -f "$W" --state-dir "$W/state" "$@"; }
# An apply's output is shown only if it fails.
ap() { f apply --yes > "$W/apply.log" 2>&1 || { cat "$W/apply.log" >&2; exit 1; }; }
boot_ms() { f state show "vm.$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["outputs"]["boot_ms"])'; }

write stopped stopped
ap
deb=(); bb=()
for i in $(seq "$RUNS"); do
  write running stopped; ap; deb+=("$(boot_ms deb)")
  if [ "$i" = "$RUNS" ]; then
    f exec vm.deb -- systemctl is-system-running --wait || true
    f exec vm.deb -- systemd-analyze || true
    f exec vm.deb -- systemd-analyze blame --no-pager | head -12 || true
  fi
  write stopped stopped; ap
  write stopped running; ap; bb+=("$(boot_ms bb)")
  write stopped stopped; ap
  printf 'run %d: debian/systemd %s ms, busybox/agent-as-init %s ms\n' "$i" "${deb[-1]}" "${bb[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
md=$(median "${deb[@]}"); mb=$(median "${bb[@]}")
printf '\nmedian agent-ready: debian/systemd %s ms, busybox %s ms, ratio %.2f\n' "$md" "$mb" "$(echo "$md / $mb" | bc -l)"
