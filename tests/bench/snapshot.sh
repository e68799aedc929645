#!/usr/bin/env bash
# Benchmark: resume from `state = "suspended"` vs a cold boot of the same VM, to agent-ready
# (`boot_ms`, which fort records for both: from starting the VMM to the agent's answer), and
# the suspend itself (`suspend_ms`, snapshot bytes, per GiB of guest memory). Same VM, same
# run, alternating. Runs in a fresh network namespace, QEMU/TCG here.
#
# Usage (root): tests/bench/snapshot.sh [RUNS] [MEMORY]   (default 5, 256MiB)
set -Eeuo pipefail
trap 'echo "$0: line $LINENO: \"$BASH_COMMAND\" failed ($?)" >&2' ERR
cd "$(dirname "$0")/../.."
RUNS=${1:-5}
MEM=${2:-256MiB}
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

W=$(mktemp -d /tmp/fort-bench-snap.XXXXXX)
chmod 711 "$W"   # confined VMMs run as their own uid and must reach the state dir
trap '"$FORT" -f "$W" --state-dir "$W/state" destroy --yes >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
write() {  # write STATE
  { printf '[fort]\nversion = 1\n[kernel.k]\nurl = "%s/vmlinuz"\ninitrd = { url = "%s/initrd.cpio.gz" }\n' "$A" "$A"
    printf '[rootfs.r]\nurl = "%s/rootfs.tar.gz"\n[template.t]\nrootfs = "r"\nsize = "128MiB"\n' "$A"
    printf '[network.lan]\ncidr = "10.77.0.0/24"\nisolated = true\n'
    printf '[vm.a]\nvmm = "qemu"\nkernel = "k"\nroot = { template = "t", size = "256MiB" }\nmemory = "%s"\nnetwork = "lan"\nstate = "%s"\n' "$MEM" "$1"
  } > "$W/fort.toml"
}
f() { "$FORT" -f "$W" --state-dir "$W/state" "$@"; }
out() { f state show vm.a --json | python3 -c "import json,sys; o=json.load(sys.stdin)['outputs']; print($1)"; }

write stopped
f apply --yes >/dev/null
cold=(); warm=(); susp=(); bytes=()
for i in $(seq "$RUNS"); do
  write running; f apply --yes >/dev/null; cold+=("$(out 'o["boot_ms"]')")
  sleep 2   # let the guest settle (its agent answers before init is done)
  write suspended; f apply --yes >/dev/null
  susp+=("$(out 'o["suspended"]["suspend_ms"]')"); bytes+=("$(out 'o["suspended"]["bytes"]')")
  write running; f apply --yes >/dev/null; warm+=("$(out 'o["boot_ms"]')")
  write stopped; f apply --yes >/dev/null
  printf 'run %d: cold boot %s ms, resume %s ms; suspend %s ms (%s bytes)\n' "$i" "${cold[-1]}" "${warm[-1]}" "${susp[-1]}" "${bytes[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mc=$(median "${cold[@]}"); mw=$(median "${warm[@]}"); ms=$(median "${susp[@]}"); mb=$(median "${bytes[@]}")
mib=$(python3 -c "import re,sys; n,u=re.fullmatch(r\"(\\d+)(MiB|GiB)\",sys.argv[1]).groups(); print(int(n)*(1024 if u==\"GiB\" else 1))" "$MEM")
printf '\nmedian: cold boot %s ms, resume %s ms: %.1fx faster (target >= 5x); suspend %s ms for %s MiB of guest memory = %.2f s/GiB (target < 1), snapshot %.0f MiB\n' \
  "$mc" "$mw" "$(echo "$mc / $mw" | bc -l)" "$ms" "$mib" "$(echo "$ms / 1000 * 1024 / $mib" | bc -l)" "$(echo "$mb / 1048576" | bc -l)"
