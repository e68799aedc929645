#!/usr/bin/env bash
# Benchmark: building a 1 GiB template image from a ~50 MiB rootfs tarball — `fort apply` of
# the template (rootfs already in the cache) vs the shell baseline
#   tar -xzf rootfs.tar.gz -C dir && mke2fs -t ext4 -d dir image 1G
# on the same input, alternating, in the same run.
#
# Usage: tests/bench/image.sh [RUNS]     (default 5)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-5}
cargo build --release --locked -p fort >/dev/null 2>&1 || cargo build --release --locked -p fort
FORT="$(scripts/cargo-target-dir)/release/fort"   # where cargo put it (CARGO_TARGET_DIR respected)

W=$(mktemp -d /tmp/fort-bench-image.XXXXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/src/bin" "$W/src/usr/share/data" "$W/src/etc/conf"
cp /bin/busybox "$W/src/bin/" 2>/dev/null || true
for i in $(seq 200); do head -c 200K /dev/urandom > "$W/src/usr/share/data/blob$i"; done
for i in $(seq 3000); do seq 1 400 > "$W/src/etc/conf/file$i"; done
tar -C "$W/src" -czf "$W/rootfs.tar.gz" .
echo "rootfs: $(($(stat -c %s "$W/rootfs.tar.gz") / 1048576)) MiB compressed, $(find "$W/src" | wc -l) entries"

mkdir -p "$W/m"
cat > "$W/m/fort.toml" <<TOML
[fort]
version = 1
[rootfs.r]
url = "$W/rootfs.tar.gz"
[template.t]
rootfs = "r"
size = "1GiB"
guest_agent = false
TOML
"$FORT" -f "$W/m" --state-dir "$W/state" apply --yes --target rootfs.r >/dev/null

now() { date +%s.%N; }
base=(); fort=()
for i in $(seq "$RUNS"); do
  rm -rf "$W/x" "$W/base.img"; mkdir "$W/x"; sync
  t0=$(now)
  tar -xzf "$W/rootfs.tar.gz" -C "$W/x"
  mke2fs -q -F -t ext4 -E root_owner=0:0 -d "$W/x" "$W/base.img" 1G >/dev/null
  t1=$(now)
  base+=("$(echo "$t1 - $t0" | bc -l)")

  "$FORT" -f "$W/m" --state-dir "$W/state" destroy --yes --target template.t >/dev/null
  sync
  t0=$(now)
  "$FORT" -f "$W/m" --state-dir "$W/state" apply --yes >/dev/null
  t1=$(now)
  fort+=("$(echo "$t1 - $t0" | bc -l)")
  echo "run $i: baseline ${base[-1]}s, fort ${fort[-1]}s"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
b=$(median "${base[@]}"); f=$(median "${fort[@]}")
echo
echo "median baseline (tar -xzf + mke2fs -d): ${b}s"
echo "median fort apply (template):           ${f}s"
echo "ratio fort/baseline: $(echo "$f / $b" | bc -l | cut -c1-5)"
