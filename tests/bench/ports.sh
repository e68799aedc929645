#!/usr/bin/env bash
# Benchmark: published-port throughput. The host sends 50 MiB to a sink in the guest (busybox
# nc), (1) through the published port (the gateway address, DNATed by the output hook) and
# (2) to the guest's own address, alternately in the same run. Under QEMU/TCG the guest is
# the bottleneck: both figures are reported, and their ratio. Runs in a fresh network
# namespace (nothing leaves the machine).
#
# Usage (root): tests/bench/ports.sh [RUNS] [MIB]   (default 3 runs of 50 MiB)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
MIB=${2:-50}
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

W=$(mktemp -d /tmp/fort-bench-ports.XXXXXX)
chmod 711 "$W"   # confined VMMs run as their own uid and must reach the state dir
trap '"$FORT" -f "$W" --state-dir "$W/state" destroy --yes >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
{ printf '[fort]\nversion = 1\n[kernel.k]\nurl = "%s/vmlinuz"\ninitrd = { url = "%s/initrd.cpio.gz" }\n' "$A" "$A"
  printf '[rootfs.r]\nurl = "%s/rootfs.tar.gz"\n[template.t]\nrootfs = "r"\nsize = "128MiB"\n' "$A"
  printf '[network.lan]\ncidr = "10.77.0.0/24"\nnat = true\ndns = ["192.0.2.53"]\n'
  printf '[vm.a]\nvmm = "qemu"\nkernel = "k"\nroot = { template = "t", size = "256MiB" }\nmemory = "256MiB"\nnetwork = "lan"\nports = ["19000:9000"]\n'
} > "$W/fort.toml"
f() { "$FORT" -f "$W" --state-dir "$W/state" "$@"; }
f apply --yes >/dev/null
GUEST=$(f state show vm.a --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["outputs"]["network"]["ip"])')

# send ADDR PORT: MiB/s from connect to the guest closing (it has read everything).
send() {
  python3 - "$1" "$2" "$MIB" <<'PY'
import socket, sys, time
addr, port, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
chunk = b"\0" * (1 << 20)
for _ in range(100):
    try:
        s = socket.create_connection((addr, port), timeout=5)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(f"nothing listens on {addr}:{port}")
s.settimeout(600)
t0 = time.monotonic()
for _ in range(mib):
    s.sendall(chunk)
s.shutdown(socket.SHUT_WR)
while s.recv(65536):
    pass
print(f"{mib / (time.monotonic() - t0):.2f}")
PY
}
# One sink per transfer: nc exits when the sender closes.
sink() { f exec --timeout 900 vm.a -- sh -c 'busybox nc -l -p 9000 </dev/null >/dev/null 2>&1' & sleep 1; }

dnat=(); direct=()
for i in $(seq "$RUNS"); do
  sink; dnat+=("$(send 10.77.0.1 19000)"); wait
  sink; direct+=("$(send "$GUEST" 9000)"); wait
  printf 'run %d: published port (DNAT) %s MiB/s, guest address %s MiB/s\n' "$i" "${dnat[-1]}" "${direct[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
md=$(median "${dnat[@]}"); mg=$(median "${direct[@]}")
printf '\nmedian of %d × %d MiB: published port %s MiB/s, guest address %s MiB/s, ratio %.3f (target ≥ 0.9)\n' \
  "$RUNS" "$MIB" "$md" "$mg" "$(echo "$md / $mg" | bc -l)"
