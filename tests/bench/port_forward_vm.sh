#!/usr/bin/env bash
# Benchmark: `fort port-forward` into a real VM (QEMU/TCG here, no `network`: vsock only).
# busybox httpd in the guest serves a MIB MiB file; curl downloads it through
# `fort port-forward vm.p 0:80` (host TCP -> fort -> vhost-device-vsock -> guest agent ->
# guest TCP). Baseline in the same run: the same curl from a busybox httpd on the host's
# loopback serving the same file. Reports MiB/s of both (medians) and their ratio. Runs in a
# fresh network namespace; nothing leaves loopback.
#
# Usage (root): tests/bench/port_forward_vm.sh [RUNS] [MIB]   (default 5 runs of 64 MiB)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-5}
MIB=${2:-64}
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

W=$(mktemp -d /tmp/fort-bench-pfvm.XXXXXX)
chmod 711 "$W"   # confined VMMs run as their own uid and must reach the state dir
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; "$FORT" -f "$W" --state-dir "$W/state" destroy --yes >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
{ printf '[fort]\nversion = 1\n[kernel.k]\nurl = "%s/vmlinuz"\ninitrd = { url = "%s/initrd.cpio.gz" }\n' "$A" "$A"
  printf '[rootfs.r]\nurl = "%s/rootfs.tar.gz"\n[template.t]\nrootfs = "r"\nsize = "128MiB"\n' "$A"
  printf '[vm.p]\nvmm = "qemu"\nkernel = "k"\nroot = { template = "t", size = "%dMiB" }\nmemory = "256MiB"\n' $((MIB + 256))
} > "$W/fort.toml"
f() { "$FORT" -f "$W" --state-dir "$W/state" "$@"; }
f apply --yes >"$W/apply.log" 2>&1 || { cat "$W/apply.log" >&2; exit 1; }

# The same bytes in the guest and on the host.
mkdir -p "$W/www"
head -c $((MIB << 20)) /dev/urandom > "$W/www/big"
f exec vm.p -- /bin/busybox mkdir -p /www >/dev/null
f cp "$W/www/big" vm.p:/www/big >/dev/null 2>&1
f exec -d vm.p -- /bin/busybox httpd -f -p 80 -h /www >/dev/null
busybox httpd -f -p 127.0.0.1:18380 -h "$W/www" &
pids+=($!)
"$FORT" -f "$W" --state-dir "$W/state" port-forward vm.p 0:80 >"$W/fwd.out" &   # not via f(): $! must be fort
pids+=($!)
for _ in $(seq 300); do [ -s "$W/fwd.out" ] && break; sleep 0.1; done
FWD=$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$W/fwd.out")
want=$(sha256sum < "$W/www/big" | cut -d' ' -f1)
# get PORT: MiB/s of one download (and its sha256 checked).
get() {
  local out
  out=$(curl -sS --fail -o "$W/got" -w '%{speed_download}' "http://127.0.0.1:$1/big")
  [ "$(sha256sum < "$W/got" | cut -d' ' -f1)" = "$want" ] || { echo "port $1: wrong bytes" >&2; exit 1; }
  echo "$out / 1048576" | bc -l
}
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$FWD/" && break; sleep 0.2; done
plain=(); vm=()
for i in $(seq "$RUNS"); do
  plain+=("$(get 18380)")
  vm+=("$(get "$FWD")")
  printf 'run %d: host loopback %.1f MiB/s, port-forward into the VM %.1f MiB/s\n' "$i" "${plain[-1]}" "${vm[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mp=$(median "${plain[@]}"); mv=$(median "${vm[@]}")
printf '\nmedian of %d x %d MiB: host loopback %.1f MiB/s, port-forward into a TCG VM %.1f MiB/s, ratio %.1f\n' \
  "$RUNS" "$MIB" "$mp" "$mv" "$(echo "$mp / $mv" | bc -l)"
