#!/usr/bin/env bash
# Benchmark: warm start (`[template.T] warm = true`) vs cold boot, QEMU/TCG here, in one run
# on a loop-mounted btrfs state dir, in a fresh network namespace:
#   1. time to agent-ready of one new VM (`boot_ms`: VMM start → agent answers; and the whole
#      `fort apply` wall time), cold and warm alternating, RUNS times each;
#   2. a pool of 3 created at once, cold vs warm (`fort apply` wall time);
#   3. the disk used by each extra warm instance (btrfs used bytes, `btrfs filesystem sync`
#      first) against the size of the memory image.
#
# Usage (root): tests/bench/warm.sh [RUNS] [MEMORY]   (default 5, 256MiB)
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

W=$(mktemp -d /var/tmp/fort-bench-warm.XXXXXX)
chmod 711 "$W"   # confined VMMs run as their own uid and must reach the state dir
S="$W/mnt/state"
f() { "$FORT" -f "$W" --state-dir "$S" "$@" 2>>"$W/fort.log" | tee -a "$W/fort.log" || { echo "fort $*: failed; its output:" >&2; tail -20 "$W/fort.log" >&2; return 1; }; }
cleanup() { f destroy --yes >/dev/null 2>&1 || true; umount "$W/mnt" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
truncate -s 8G "$W/btrfs.img"
mkfs.btrfs -q "$W/btrfs.img"
mkdir "$W/mnt"
mount -o loop "$W/btrfs.img" "$W/mnt"
chmod 711 "$W/mnt"

write() {  # write "vm sections"
  { printf '[fort]\nversion = 1\n[kernel.k]\nurl = "%s/vmlinuz"\ninitrd = { url = "%s/initrd.cpio.gz" }\n' "$A" "$A"
    printf '[rootfs.r]\nurl = "%s/rootfs.tar.gz"\n' "$A"
    printf '[template.cold]\nrootfs = "r"\nsize = "128MiB"\n'
    printf '[template.warm]\nrootfs = "r"\nsize = "128MiB"\nwarm = true\n'
    printf '[network.lan]\ncidr = "10.77.0.0/24"\nisolated = true\n'
    printf '%b' "$1"
  } > "$W/fort.toml"
}
vm() {  # vm NAME TEMPLATE [COUNT]
  printf '[vm.%s]\nvmm = "qemu"\nkernel = "k"\nroot = { template = "%s", size = "256MiB" }\nmemory = "%s"\nnetwork = "lan"\n%s' \
    "$1" "$2" "$MEM" "${3:+count = $3\n}"
}
boot_ms() { f state show "vm.$1" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['outputs']['boot_ms'])"; }
now() { date +%s%N; }
used() { btrfs filesystem sync "$W/mnt" >/dev/null; python3 -c "import os; s=os.statvfs('$W/mnt'); print((s.f_blocks-s.f_bfree)*s.f_frsize)"; }

# The warm snapshot is made once, by the first warm VM (its time is reported apart).
write ""
f apply --yes >/dev/null
write "$(vm first warm)"
t=$(now); f apply --yes >/dev/null; first=$(( ($(now) - t) / 1000000 ))
write ""
f apply --yes >/dev/null
echo "first warm VM (boots the builder, saves it, restores): apply ${first} ms"

cold=(); warm=(); cold_wall=(); warm_wall=()
for i in $(seq "$RUNS"); do
  write "$(vm c cold)"; t=$(now); f apply --yes >/dev/null; cold_wall+=($(( ($(now) - t) / 1000000 ))); cold+=("$(boot_ms c)")
  write ""; f apply --yes >/dev/null
  write "$(vm w warm)"; t=$(now); f apply --yes >/dev/null; warm_wall+=($(( ($(now) - t) / 1000000 ))); warm+=("$(boot_ms w)")
  write ""; f apply --yes >/dev/null
  printf 'run %d: cold boot %s ms (apply %s ms), warm start %s ms (apply %s ms)\n' "$i" "${cold[-1]}" "${cold_wall[-1]}" "${warm[-1]}" "${warm_wall[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mc=$(median "${cold[@]}"); mw=$(median "${warm[@]}"); mcw=$(median "${cold_wall[@]}"); mww=$(median "${warm_wall[@]}")
printf '\nmedian to agent-ready: cold boot %s ms, warm start %s ms: %.1fx faster (target >= 5x)\n' "$mc" "$mw" "$(echo "$mc / $mw" | bc -l)"
printf 'median fort apply: cold %s ms, warm %s ms: %.1fx\n' "$mcw" "$mww" "$(echo "$mcw / $mww" | bc -l)"

write "$(vm p cold 3)"; t=$(now); f apply --yes >/dev/null; pc=$(( ($(now) - t) / 1000000 ))
write ""; f apply --yes >/dev/null
base=$(used)
write "$(vm p warm 1)"; f apply --yes >/dev/null; one=$(used)
write ""; f apply --yes >/dev/null
write "$(vm p warm 3)"; t=$(now); f apply --yes >/dev/null; pw=$(( ($(now) - t) / 1000000 )); three=$(used)
printf 'pool of 3, created at once: cold %s ms, warm %s ms: %.1fx faster\n' "$pc" "$pw" "$(echo "$pc / $pw" | bc -l)"
# The memory image: QEMU's device state (vmstate) and the guest's saved pages (memory, a
# sparse file: its allocated bytes, not its length).
snap=$(du -B1 -c "$S"/warm/*/vmstate "$S"/warm/*/memory | tail -1 | cut -f1)
printf 'disk: memory image %.1f MiB; used with 1 warm instance %.1f MiB over none, with 3 %.1f MiB: %.1f MiB (%.1f%% of the memory image) per extra instance (target < 10%%)\n' \
  "$(echo "$snap / 1048576" | bc -l)" "$(echo "($one - $base) / 1048576" | bc -l)" "$(echo "($three - $base) / 1048576" | bc -l)" \
  "$(echo "($three - $one) / 2 / 1048576" | bc -l)" "$(echo "($three - $one) / 2 * 100 / $snap" | bc -l)"
