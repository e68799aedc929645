#!/usr/bin/env bash
# Benchmark: fort watch. (1) manifest save → apply start: the time from writing fort.toml to
# the watch logging the first planned change of that pass (20 saves, p50 and max); (2) an idle
# watch over 10 resources: CPU share and RSS over 30 s with the default 10 s interval.
#
# Usage: tests/bench/watch.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -p fort >/dev/null 2>&1 || cargo build --release --locked -p fort
FORT="$(scripts/cargo-target-dir)/release/fort"   # where cargo put it (CARGO_TARGET_DIR respected)
W=$(mktemp -d /tmp/fort-bench-watch.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; rm -rf "$W"' EXIT
for i in $(seq 0 9); do head -c 1M /dev/urandom > "$W/asset$i"; done
body() {  # body N: N of the 10 assets
  printf '[fort]\nversion = 1\n'
  for i in $(seq 0 $(($1 - 1))); do printf '[kernel.k%d]\nurl = "asset%d"\n' "$i" "$i"; done
}
body 9 > "$W/fort.toml"
"$FORT" -f "$W/fort.toml" --state-dir "$W/state" watch --max-destroy 100 --interval 60s 2>"$W/log" &
PID=$!
until grep -q "start: applied" "$W/log"; do sleep 0.05; done

lat=()
for i in $(seq 20); do
  n=$(( i % 2 == 0 ? 9 : 10 ))
  before=$(grep -c "change of fort.toml: [+-] " "$W/log" || true)
  t0=$(date +%s.%N)
  body $n > "$W/fort.toml.tmp" && mv "$W/fort.toml.tmp" "$W/fort.toml"   # an editor's save
  until [ "$(grep -c "change of fort.toml: [+-] " "$W/log" || true)" -gt "$before" ]; do sleep 0.005; done
  line=$(grep "change of fort.toml: [+-] " "$W/log" | tail -1)
  ts=$(date -d "$(echo "$line" | cut -c1-27)" +%s.%N)
  lat+=("$(echo "($ts - $t0) * 1000" | bc -l)")
  sleep 0.4
done
sorted=$(printf '%s\n' "${lat[@]}" | sort -g)
p50=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
max=$(echo "$sorted" | tail -1)
printf 'save → apply start over 20 saves: p50 %.0f ms, max %.0f ms (debounce 200 ms; target p50 < 300 ms)\n' "$p50" "$max"

# Idle: 10 resources, default interval.
kill $PID; wait $PID 2>/dev/null || true
body 10 > "$W/fort.toml"
"$FORT" -f "$W/fort.toml" --state-dir "$W/state" watch --max-destroy 100 2>"$W/log2" &
PID=$!
until grep -q "start: " "$W/log2"; do sleep 0.05; done
sleep 2
tck=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
c0=$(cpu); t0=$(date +%s.%N)
sleep 30
c1=$(cpu); t1=$(date +%s.%N)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
passes=$(grep -c "interval: no changes" "$W/log2" || true)
printf 'idle over 10 resources, 30 s: %.2f%% of a core, RSS %.1f MiB, %d interval passes (targets < 1%%, < 30 MiB)\n' \
  "$(echo "($c1 - $c0) / $tck / ($t1 - $t0) * 100" | bc -l)" "$(echo "$rss / 1024" | bc -l)" "$passes"
