#!/usr/bin/env bash
# Benchmark: what confinement costs a VM start. fort's overhead per VM is measured as in
# tests/bench/vms.sh (`fort apply` wall time minus the VMM's boot-to-agent time, `boot_ms`),
# alternately with FORT_CONFINE=0 (the VM runs as root, unconfined) and confined (its own
# uid, cgroup, seccomp), in the same run and the same state dir. Target: confined costs at
# most 50 ms more. Runs in a fresh network namespace, QEMU/TCG here.
#
# Usage (root): tests/bench/confine.sh [RUNS]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-5}
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

W=$(mktemp -d /tmp/fort-bench-confine.XXXXXX)
chmod 0711 "$W"   # confined VMs' uids traverse it to the state dir
trap '"$FORT" -f "$W" --state-dir "$W/state" destroy --yes >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
write() {  # write STATE
  { printf '[fort]\nversion = 1\n[kernel.k]\nurl = "%s/vmlinuz"\ninitrd = { url = "%s/initrd.cpio.gz" }\n' "$A" "$A"
    printf '[rootfs.r]\nurl = "%s/rootfs.tar.gz"\n[template.t]\nrootfs = "r"\nsize = "128MiB"\n' "$A"
    printf '[network.lan]\ncidr = "10.77.0.0/24"\nnat = true\nisolated = true\ndns = ["192.0.2.53"]\n'
    printf '[vm.a]\nvmm = "qemu"\nkernel = "k"\nroot = { template = "t", size = "256MiB" }\nmemory = "256MiB"\nnetwork = "lan"\nstate = "%s"\n' "$1"
  } > "$W/fort.toml"
}
f() { "$FORT" -f "$W" --state-dir "$W/state" "$@"; }
now() { date +%s.%N; }
boot_ms() { f state show vm.a --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["outputs"]["boot_ms"])'; }

write stopped
f apply --yes >/dev/null
declare -A over
for i in $(seq "$RUNS"); do
  line="run $i:"
  for mode in 0 1; do
    write running
    t0=$(now); FORT_CONFINE=$mode f apply --yes >/dev/null; t1=$(now)
    wall=$(echo "($t1 - $t0) * 1000" | bc -l); b=$(boot_ms)
    o=$(echo "$wall - $b" | bc -l)
    over[$mode]="${over[$mode]:-} $o"
    [ "$mode" = 1 ] && name=confined || name=unconfined
    line="$line $name $(printf '%.0f' "$wall") ms (boot $b, overhead $(printf '%.0f' "$o") ms);"
    write stopped; f apply --yes >/dev/null
  done
  echo "$line"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# shellcheck disable=SC2086
m0=$(median ${over[0]}); m1=$(median ${over[1]})
printf '\nmedian fort overhead per VM: unconfined %.0f ms, confined %.0f ms: confinement costs %.0f ms (target <= 50)\n' \
  "$m0" "$m1" "$(echo "$m1 - $m0" | bc -l)"
