#!/usr/bin/env bash
# Benchmark: fetching a ~256 MiB .xz asset from a loopback HTTP server with sha256 and
# decompression — `fort apply` of one kernel vs the shell baseline
#   curl -s URL | tee >(sha256sum >/dev/null) | xz -d >/dev/null
# run alternately in the same session. Prints medians, the ratio and fort's peak RSS.
#
# Usage: tests/bench/fetch.sh [RUNS]      (default 5; needs curl, xz, python3, /usr/bin/time)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-5}

for p in curl xz-utils python3 time bc; do
  dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$p"; }
done
cargo build --release --locked -p fort >/dev/null 2>&1 || cargo build --release --locked -p fort
FORT="$(scripts/cargo-target-dir)/release/fort"   # where cargo put it (CARGO_TARGET_DIR respected)

W=$(mktemp -d /tmp/fort-bench-fetch.XXXXXX)
SRV=
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

echo "making the asset (base64 of random data, xz -1: real LZMA work to decode)…"
head -c 200M /dev/urandom | base64 -w 76 | xz -T2 -1 > "$W/big.xz"
SIZE=$(stat -c %s "$W/big.xz")
SHA=$(sha256sum "$W/big.xz" | cut -d' ' -f1)
echo "asset: $((SIZE / 1048576)) MiB compressed"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$W" "$PORT" >/dev/null 2>&1 &
SRV=$!
URL="http://127.0.0.1:$PORT/big.xz"
for _ in $(seq 50); do curl -fsI "$URL" >/dev/null 2>&1 && break; sleep 0.1; done

mkdir -p "$W/m"
cat > "$W/m/fort.toml" <<TOML
[fort]
version = 1
[kernel.big]
url = "$URL"
sha256 = "$SHA"
TOML

now() { date +%s.%N; }
base_times=()
fort_times=()
rss=0
for i in $(seq "$RUNS"); do
  t0=$(now)
  curl -s "$URL" | tee >(sha256sum >/dev/null) | xz -d >/dev/null
  t1=$(now)
  base_times+=("$(echo "$t1 - $t0" | bc -l)")

  rm -rf "$W/state"
  /usr/bin/time -f "%e %M" -o "$W/time" "$FORT" -f "$W/m" --state-dir "$W/state" apply --yes >/dev/null
  read -r secs kb < "$W/time"
  fort_times+=("$secs")
  [ "$kb" -gt "$rss" ] && rss=$kb
  echo "run $i: baseline ${base_times[-1]}s, fort ${secs}s (${kb} KiB peak RSS)"
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
b=$(median "${base_times[@]}")
f=$(median "${fort_times[@]}")
echo
echo "median baseline: ${b}s"
echo "median fort:     ${f}s"
echo "ratio fort/baseline: $(echo "$f / $b" | bc -l | cut -c1-5)"
echo "fort peak RSS: $((rss / 1024)) MiB"
