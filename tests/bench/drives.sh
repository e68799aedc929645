#!/usr/bin/env bash
# Benchmark: 100 drives from a 1 GiB template image on btrfs — `fort apply` of 100
# `drive.*` resources (reflink clones) vs `cp --reflink=never` of the same image 100 times,
# in the same run, on the same loop-mounted btrfs; plus how much used space each adds.
#
# Usage: tests/bench/drives.sh [DRIVES]     (default 100; needs root, btrfs-progs)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100}
cargo build --release --locked -p fort >/dev/null 2>&1 || cargo build --release --locked -p fort
FORT="$(scripts/cargo-target-dir)/release/fort"   # where cargo put it (CARGO_TARGET_DIR respected)

W=$(mktemp -d /var/tmp/fort-bench-drives.XXXXXX)
cleanup() { umount "$W/mnt" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
# A sparse 40 GiB btrfs: the baseline's copies keep the image's holes, so they need about
# N × the image's data, not N GiB.
truncate -s 40G "$W/btrfs.img"
mkfs.btrfs -q "$W/btrfs.img"
mkdir "$W/mnt"
mount -o loop "$W/btrfs.img" "$W/mnt"

# The rootfs of tests/bench/image.sh: 40 MiB compressed, ~3,200 entries.
mkdir -p "$W/src/bin" "$W/src/usr/share/data" "$W/src/etc/conf"
cp /bin/busybox "$W/src/bin/"
for i in $(seq 200); do head -c 200K /dev/urandom > "$W/src/usr/share/data/blob$i"; done
for i in $(seq 3000); do seq 1 400 > "$W/src/etc/conf/file$i"; done
tar -C "$W/src" -czf "$W/rootfs.tar.gz" .

mkdir -p "$W/m"
{
  printf '[fort]\nversion = 1\n[rootfs.r]\nurl = "%s"\n' "$W/rootfs.tar.gz"
  printf '[template.t]\nrootfs = "r"\nsize = "1GiB"\nguest_agent = false\n'
  for i in $(seq 0 $((N - 1))); do printf '[drive.d%d]\ntemplate = "t"\nsize = "1GiB"\n' "$i"; done
} > "$W/m/fort.toml"
S="$W/mnt/state"
"$FORT" -f "$W/m" --state-dir "$S" apply --yes --target template.t >/dev/null
IMG=$(ls "$S"/images/*.ext4)
echo "image: $(du -m --apparent-size "$IMG" | cut -f1) MiB apparent, $(du -m "$IMG" | cut -f1) MiB allocated"

used() { sync; stat -f -c '%b %f %S' "$W/mnt" | awk '{printf "%.0f\n", ($1 - $2) * $3}'; }
now() { date +%s.%N; }

mkdir "$W/mnt/copies"
u0=$(used)
t0=$(now)
for i in $(seq 0 $((N - 1))); do cp --reflink=never "$IMG" "$W/mnt/copies/d$i.ext4"; done
sync
t1=$(now)
u1=$(used)
base=$(echo "$t1 - $t0" | bc -l)
rm -rf "$W/mnt/copies"
sync

u2=$(used)
t0=$(now)
"$FORT" -f "$W/m" --state-dir "$S" apply --yes >/dev/null
sync
t1=$(now)
u3=$(used)
fort=$(echo "$t1 - $t0" | bc -l)
[ "$(ls "$S"/drives/*.ext4 | wc -l)" -eq "$N" ] || { echo "expected $N drives" >&2; exit 1; }
methods=$("$FORT" -f "$W/m" --state-dir "$S" state list --json | python3 -c '
import json, sys
rows = json.load(sys.stdin)
rows = rows if isinstance(rows, list) else rows.get("resources", [])
print(sorted({r.get("outputs", {}).get("method") for r in rows if r["address"].startswith("drive.")}))')

mib() { echo "$1 / 1048576" | bc; }
echo "cp --reflink=never x$N: ${base}s, used space +$(mib $((u1 - u0))) MiB"
echo "fort apply x$N drives: ${fort}s, used space +$(mib $((u3 - u2))) MiB, methods $methods"
echo "speed-up: $(echo "$base / $fort" | bc -l | cut -c1-6)x"
echo "fort's growth as a share of $N GiB: $(echo "100 * ($u3 - $u2) / ($N * 1073741824)" | bc -l | cut -c1-6)%"
