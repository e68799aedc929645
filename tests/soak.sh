#!/usr/bin/env bash
# Soak test (not in CI): `fort watch` runs for MINUTES (default 30) while a driver randomly
# kills VMMs, kills and restarts fort watch, and edits the manifest (pool size, memory, a VM
# added and removed). At the end: fort converges (plan empty), nothing leaks (processes,
# interfaces, leases, run dirs of the state dir are exactly what state records), fort
# watch's RSS stayed bounded; then destroy leaves nothing. Prints the figures.
#
# Runs as root inside a network namespace of its own (unshare -n): guests' traffic never
# leaves it. Usage: tests/soak.sh [MINUTES] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
SEED=${2:-$RANDOM}

if [ "${FORT_SOAK_IN_NETNS:-}" != 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "soak: needs root (network namespace, bridges, TAPs)" >&2; exit 1; }
  scripts/install-deps >/dev/null
  cargo build --release --locked -p fort >&2
  scripts/build-agent >&2
  scripts/build-vm-assets >&2
  exec env FORT_SOAK_IN_NETNS=1 unshare --net "$0" "$MINUTES" "$SEED"
fi

RANDOM=$SEED
ip link set lo up
# Nothing but loopback: no route leads out of this namespace.
if [ "$(ip -4 route show | wc -l)" != 0 ]; then echo "soak: the namespace has routes" >&2; exit 1; fi

target=$(scripts/cargo-target-dir)
FORT="$target/release/fort"
export FORT_GUEST_AGENT="$target/x86_64-unknown-linux-gnu/agent/fort-guest-agent"
[ -x "$FORT_GUEST_AGENT" ] || FORT_GUEST_AGENT="$target/release/fort-guest-agent"
A=${FORT_TEST_ASSETS:-/var/cache/fort-assets}
W=$(mktemp -d /tmp/fort-soak.XXXXXX)
chmod 711 "$W"   # confined VMMs run as their own uid and must reach the state dir
S="$W/state"
LOG="$W/watch.log"
say() { echo "soak: $(date +%T) $*" >&2; }

count=2 memory=192 extra=0
manifest() {
  {
    cat <<EOF
[fort]
version = 1

[kernel.deb]
url = "file://$A/vmlinuz"
initrd = { url = "file://$A/initrd.cpio.gz" }

[rootfs.bb]
url = "file://$A/rootfs.tar.gz"

[template.t]
rootfs = "bb"
size = "128MiB"

[network.lan]
cidr = "10.81.0.0/24"
nat = true
isolated = true

[vm.w]
count = $count
vmm = "qemu"
kernel = "deb"
root = { template = "t", size = "256MiB" }
memory = "${memory}MiB"
network = "lan"
restart = "always"
EOF
    if [ "$extra" = 1 ]; then
      cat <<EOF

[vm.extra]
vmm = "qemu"
kernel = "deb"
root = { template = "t", size = "256MiB" }
memory = "160MiB"
network = "lan"
restart = "always"
EOF
    fi
  } > "$W/fort.toml.new"
  mv "$W/fort.toml.new" "$W/fort.toml"
}

fort() { "$FORT" -f "$W/fort.toml" --state-dir "$S" "$@"; }
watch_pid=
start_watch() {
  # The binary itself (not the `fort` function, whose `&` would fork a subshell): $! must be
  # the watch's PID, the one the driver kills.
  "$FORT" -f "$W/fort.toml" --state-dir "$S" watch --interval 3s --max-destroy 100 >>"$LOG" 2>&1 &
  watch_pid=$!
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
vmm_pids() {
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q "^qemu-system-x86_64 .*$S/run/"; then basename "$p"; fi
  done
}

manifest
start_watch
say "watching $W (seed $SEED, $MINUTES min)"
end=$(( $(date +%s) + MINUTES * 60 ))
kills=0 restarts=0 edits=0 max_rss=0 samples=0
while [ "$(date +%s)" -lt "$end" ]; do
  sleep $(( 5 + RANDOM % 15 ))
  r=$(rss_kib "$watch_pid"); [ "$r" -gt "$max_rss" ] && max_rss=$r; samples=$((samples + 1))
  case $(( RANDOM % 3 )) in
    0) mapfile -t pids < <(vmm_pids)
       if [ ${#pids[@]} -gt 0 ]; then
         p=${pids[$(( RANDOM % ${#pids[@]} ))]}
         kill -9 "$p" 2>/dev/null && { kills=$((kills + 1)); say "killed VMM $p"; }
       fi ;;
    1) kill -9 "$watch_pid" 2>/dev/null || true
       wait "$watch_pid" 2>/dev/null || true
       restarts=$((restarts + 1)); say "killed fort watch $watch_pid, restarting"
       start_watch ;;
    2) case $(( RANDOM % 3 )) in
         0) count=$(( 1 + RANDOM % 3 )) ;;
         1) memory=$([ "$memory" = 192 ] && echo 224 || echo 192) ;;
         2) extra=$(( 1 - extra )) ;;
       esac
       manifest; edits=$((edits + 1)); say "edited: count=$count memory=${memory}MiB extra=$extra" ;;
  esac
done

say "driver stopped; waiting for fort watch to converge"
t0=$(date +%s)
converged=
while [ $(( $(date +%s) - t0 )) -lt 600 ]; do
  if fort plan --detailed-exitcode >/dev/null 2>&1; then converged=$(( $(date +%s) - t0 )); break; fi
  sleep 5
done
kill -TERM "$watch_pid"; wait "$watch_pid" || true
# Exactly one watch ran at a time: none is left once the last one is stopped.
if pgrep -f -- "--state-dir $S watch" >/dev/null; then say "a fort watch is still running"; exit 1; fi
[ -n "$converged" ] || { say "did not converge in 10 min"; fort plan || true; exit 1; }

# Nothing leaks: the VMM processes, TAPs and leases are exactly the recorded VMs'.
recorded=$(fort state list --json | python3 -c '
import json, sys
rows = json.load(sys.stdin)
vms = [r for r in rows if r["kind"] == "vm"]
pids = sorted(p["pid"] for r in vms for p in (r["outputs"]["started"]["vmm"], r["outputs"]["started"]["helper"]))
print(" ".join(map(str, pids)))
print(" ".join(sorted(r["outputs"]["network"]["tap"] for r in vms) + ["fort-lan"]))
print(" ".join(sorted(r["address"] for r in vms)))
print(" ".join(sorted(r["address"].split(".", 1)[1] for r in vms)))')
want_pids=$(sed -n 1p <<<"$recorded")
want_links=$(sed -n 2p <<<"$recorded" | tr ' ' '\n' | sort | xargs)
want_leases=$(sed -n 3p <<<"$recorded")
want_runs=$(sed -n 4p <<<"$recorded" | tr ' ' '\n' | sort | xargs)
got_pids=$(for p in /proc/[0-9]*; do
  if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q "$S/run/"; then basename "$p"; fi
done | sort -n | xargs)
got_links=$(ip -j link show | python3 -c '
import json, sys
print(" ".join(sorted(l["ifname"] for l in json.load(sys.stdin) if l.get("ifalias", "").startswith("fort:"))))')
got_leases=$(python3 -c '
import sqlite3, sys
c = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
print(" ".join(sorted(r[0] for r in c.execute("SELECT owner FROM leases"))))' "$S/state.db")
got_runs=$(ls "$S/run" | sort | xargs)
fail=0
check() { if [ "$2" != "$3" ]; then say "LEAK in $1: have [$2], records say [$3]"; fail=1; fi; }
check processes "$(tr ' ' '\n' <<<"$got_pids" | sort -n | xargs)" "$(tr ' ' '\n' <<<"$want_pids" | sort -n | xargs)"
check interfaces "$got_links" "$want_links"
check leases "$got_leases" "$want_leases"
check "run dirs" "$got_runs" "$want_runs"
passes=$(grep -c ': applied\|: no changes' "$LOG" || true)
crashes=$(grep -c 'died (crash' "$LOG" || true)

fort destroy --yes --allow-data-loss >/dev/null
left=$(for p in /proc/[0-9]*; do tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q "$S/" && basename "$p"; done | xargs || true)
links_left=$(ip -j link show | python3 -c '
import json, sys
print(" ".join(l["ifname"] for l in json.load(sys.stdin) if l.get("ifalias", "").startswith("fort:")))')
[ -z "$left" ] || { say "destroy left processes: $left"; fail=1; }
[ -z "$links_left" ] || { say "destroy left interfaces: $links_left"; fail=1; }

echo "soak: ${MINUTES} min, seed $SEED: $kills VMMs killed, $restarts fort watch restarts, $edits manifest edits; $passes watch passes logged, $crashes crashes seen by watch"
echo "soak: converged ${converged}s after the driver stopped; fort watch peak RSS $(( max_rss / 1024 )) MiB over $samples samples"
echo "soak: leaks: $([ $fail = 0 ] && echo none || echo FOUND); logs in $W"
exit $fail
