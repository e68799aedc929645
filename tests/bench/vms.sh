#!/usr/bin/env bash
# Benchmark: VM apply. (1) fort's own overhead per VM = `fort apply` wall time minus the
# VMM's boot-to-agent time (`boot_ms` recorded by fort); (2) two VMs applied at once vs one,
# in the same run. Everything else (assets, images, drives, network) is applied beforehand,
# so the timed apply only boots VMs. Runs in a fresh network namespace, QEMU/TCG here.
#
# Usage (root): tests/bench/vms.sh [RUNS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
if [ -z "${FORT_BENCH_IN_NETNS:-}" ]; then
  exec env FORT_BENCH_IN_NETNS=1 unshare -n "$0" "$@"
fi
ip link set lo up
cargo build --release --locked -p fort >/dev/null 2>&1 || cargo build --release --locked -p fort
FORT="$(scripts/cargo-target-dir)/release/fort"   # where cargo put it (CARGO_TARGET_DIR respected)
# Assigned apart from the export: `export X=$(…)` would hide a failed build.
FORT_GUEST_AGENT=$(scripts/build-agent 2>/dev/null)
export FORT_GUEST_AGENT
A=/var/cache/fort-assets
scripts/build-vm-assets "$A" 2>/dev/null

W=$(mktemp -d /tmp/fort-bench-vms.XXXXXX)
chmod 711 "$W"   # confined VMMs run as their own uid and must reach the state dir
trap '"$FORT" -f "$W" --state-dir "$W/state" destroy --yes >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
vm() { printf '[vm.%s]\nvmm = "qemu"\nkernel = "k"\nroot = { template = "t", size = "256MiB" }\nmemory = "256MiB"\nnetwork = "lan"\nstate = "%s"\n' "$1" "$2"; }
write() {  # write STATE_A STATE_B
  { printf '[fort]\nversion = 1\n[kernel.k]\nurl = "%s/vmlinuz"\ninitrd = { url = "%s/initrd.cpio.gz" }\n' "$A" "$A"
    printf '[rootfs.r]\nurl = "%s/rootfs.tar.gz"\n[template.t]\nrootfs = "r"\nsize = "128MiB"\n' "$A"
    printf '[network.lan]\ncidr = "10.77.0.0/24"\nnat = true\nisolated = true\ndns = ["192.0.2.53"]\n'
    vm a "$1"; vm b "$2"; } > "$W/fort.toml"
}
f() { "$FORT" -f "$W" --state-dir "$W/state" "$@"; }
now() { date +%s.%N; }
boot_ms() { f state show "vm.$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["outputs"]["boot_ms"])'; }

write stopped stopped
f apply --yes >/dev/null
one=(); two=(); over=()
for i in $(seq "$RUNS"); do
  write running stopped
  t0=$(now); f apply --yes >/dev/null; t1=$(now)
  wall=$(echo "($t1 - $t0) * 1000" | bc -l); b=$(boot_ms a)
  one+=("$wall"); over+=("$(echo "$wall - $b" | bc -l)")
  write stopped stopped; f apply --yes >/dev/null
  write running running
  t0=$(now); f apply --yes >/dev/null; t1=$(now)
  two+=("$(echo "($t1 - $t0) * 1000" | bc -l)")
  write stopped stopped; f apply --yes >/dev/null
  printf 'run %d: one VM %.0f ms (boot %s ms, fort overhead %.0f ms); two VMs %.0f ms\n' "$i" "${one[-1]}" "$b" "${over[-1]}" "${two[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m1=$(median "${one[@]}"); m2=$(median "${two[@]}"); mo=$(median "${over[@]}")
printf '\nmedian: one VM %.0f ms, two VMs %.0f ms, ratio %.2f (target < 1.5); fort overhead per VM %.0f ms (target < 100)\n' \
  "$m1" "$m2" "$(echo "$m2 / $m1" | bc -l)" "$mo"
