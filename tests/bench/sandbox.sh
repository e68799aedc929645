#!/usr/bin/env bash
# Benchmark: sandboxes through `fort mcp --host` (the official MCP Python SDK), QEMU/TCG here,
# in a fresh network namespace, in one run:
#   1. sandbox_create → ready, RUNS times one after another: `ready_ms` (the call) against
#      `boot_ms` (VMM start → agent answers); the difference is fort's own overhead;
#   2. CONCURRENT sandboxes created at once: wall time against CONCURRENT × one (from 1);
#   3. with CONCURRENT sandboxes up, the idle `fort mcp --host` process (service + watch loop):
#      CPU over IDLE seconds (utime+stime from /proc) and RSS.
#
# Usage (root): tests/bench/sandbox.sh [RUNS] [CONCURRENT] [IDLE]   (default 5, 10, 20)
set -Eeuo pipefail
trap 'echo "$0: line $LINENO: \"$BASH_COMMAND\" failed ($?)" >&2' ERR
cd "$(dirname "$0")/../.."
RUNS=${1:-5}
N=${2:-10}
IDLE=${3:-20}
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

W=$(mktemp -d /var/tmp/fort-bench-sandbox.XXXXXX)
chmod 711 "$W"
S="$W/state"
cleanup() { "$FORT" -f "$W/fort.toml" --state-dir "$S" destroy --yes >/dev/null 2>&1 || true; rm -rf "$W"; }
trap cleanup EXIT
cat > "$W/fort.toml" <<TOML
[fort]
version = 1
[kernel.k]
url = "$A/vmlinuz"
initrd = { url = "$A/initrd.cpio.gz" }
[rootfs.r]
url = "$A/rootfs.tar.gz"
[template.t]
rootfs = "r"
size = "128MiB"
[network.lan]
cidr = "10.81.0.0/24"
isolated = true
[sandbox.b]
vmm = "qemu"
kernel = "k"
root = { template = "t", size = "256MiB" }
memory = "192MiB"
network = "lan"
TOML
"$FORT" -f "$W/fort.toml" --state-dir "$S" apply --yes >/dev/null 2>"$W/apply.log"
export FORT_MANIFEST="$W/fort.toml" FORT_STATE_DIR="$S"
python3 tests/bench/sandbox.py "$FORT" "$RUNS" "$N" "$IDLE" >"$W/out.json" 2>"$W/client.log" &
client=$!
# Sample the server while the sandboxes idle.
until grep -q '^idle$' "$W/client.log" 2>/dev/null; do sleep 0.2; kill -0 $client; done
pid=$(pgrep -f "$FORT -f $W/fort.toml.*mcp --host|$FORT mcp --host" | head -1)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
t0=$(ticks "$pid"); s0=$(date +%s%N)
sleep "$IDLE"
t1=$(ticks "$pid"); s1=$(date +%s%N)
rss=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")
wait $client
hz=$(getconf CLK_TCK)
python3 - "$W/out.json" "$t0" "$t1" "$s0" "$s1" "$hz" "$rss" <<'PY'
import json, statistics, sys
out = json.load(open(sys.argv[1]))
t0, t1, s0, s1, hz, rss = map(int, sys.argv[2:])
seq = out["sequential"]
ready = [r["ready_ms"] for r in seq]
boot = [r["boot_ms"] for r in seq]
over = [r["ready_ms"] - r["boot_ms"] for r in seq]
one = statistics.median(ready)
c = out["concurrent"]
cpu = (t1 - t0) / hz / ((s1 - s0) / 1e9) * 100
print(f"sequential creates ({len(seq)}): ready median {statistics.median(ready)} ms, boot median {statistics.median(boot)} ms, fort overhead median {statistics.median(over)} ms (min {min(over)}, max {max(over)})")
print(f"{c['n']} concurrent creates: {c['wall_ms']} ms wall vs {c['n']} x one = {c['n'] * one:.0f} ms ({c['n'] * one / c['wall_ms']:.2f}x); boot_ms median {statistics.median(c['boot_ms'])}")
print(f"idle fort mcp --host with {c['n']} sandboxes: {cpu:.2f}% CPU over {(s1 - s0) / 1e9:.1f} s, RSS {rss / 1024:.1f} MiB")
PY
