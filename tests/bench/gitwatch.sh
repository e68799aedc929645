#!/usr/bin/env bash
# Benchmark: fort watch --git. (1) commit pushed → apply started: the time from `git push`
# returning to the watch logging "commit … applying" for that commit, with --interval 1s,
# over 20 commits (p50 and max; target p50 < 1 s + interval); (2) an idle `fort watch --git`
# against an unchanged remote: CPU share and RSS over 60 s at --interval $IDLE_INTERVAL
# (default 10s, the watch's default; targets < 1%, < 30 MiB). The remote is a bare
# repository on disk (file://).
#
# Usage: tests/bench/gitwatch.sh            IDLE_INTERVAL=1s tests/bench/gitwatch.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -p fort >/dev/null 2>&1 || cargo build --release --locked -p fort
FORT="$(scripts/cargo-target-dir)/release/fort"   # where cargo put it (CARGO_TARGET_DIR respected)
W=$(mktemp -d /tmp/fort-bench-gitwatch.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; rm -rf "$W"' EXIT
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.org GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.org GIT_CONFIG_NOSYSTEM=1 HOME="$W"
git init -q --bare -b main "$W/remote.git"
git init -q -b main "$W/work"
cd "$W/work"
git remote add origin ../remote.git
for i in $(seq 0 9); do head -c 64K /dev/urandom > "asset$i"; done
body() {  # body N: kernels k0..k(N-1) from files in the repository
  printf '[fort]\nversion = 1\n'
  for i in $(seq 0 $(($1 - 1))); do printf '[kernel.k%d]\nurl = "asset%d"\n' "$i" "$i"; done
}
body 9 > fort.toml
git add -A && git commit -qm "start" && git push -q origin main
"$FORT" --state-dir "$W/state" watch --git "file://$W/remote.git" --interval 1s --max-destroy 100 2>"$W/log" &
PID=$!
until grep -q "start: applied" "$W/log"; do sleep 0.05; done

lat=()
for i in $(seq 20); do
  n=$(( i % 2 == 0 ? 9 : 10 ))
  body $n > fort.toml
  git commit -qam "commit $i"
  id=$(git rev-parse HEAD | cut -c1-12)
  git push -q origin main
  t0=$(date +%s.%N)
  until grep -q "commit $id .*: applying" "$W/log"; do sleep 0.005; done
  line=$(grep "commit $id .*: applying" "$W/log" | tail -1)
  ts=$(date -d "$(echo "$line" | cut -c1-27)" +%s.%N)
  lat+=("$(echo "($ts - $t0) * 1000" | bc -l)")
  sleep 0.$((RANDOM % 10))   # pushes land anywhere in the interval
done
sorted=$(printf '%s\n' "${lat[@]}" | sort -g)
p50=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
max=$(echo "$sorted" | tail -1)
printf 'commit pushed → apply started over 20 commits (--interval 1s): p50 %.0f ms, max %.0f ms (target p50 < 2000 ms)\n' "$p50" "$max"

# Idle: nothing pushed for 60 s; every interval fetches and finds the same commit.
IDLE_INTERVAL=${IDLE_INTERVAL:-10s}
kill $PID; wait $PID 2>/dev/null || true
"$FORT" --state-dir "$W/state" watch --git "file://$W/remote.git" --interval "$IDLE_INTERVAL" --max-destroy 100 2>"$W/log" &
PID=$!
until grep -q "start: " "$W/log"; do sleep 0.05; done
sleep 2
tck=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
c0=$(cpu); t0=$(date +%s.%N)
sleep 60
c1=$(cpu); t1=$(date +%s.%N)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
passes=$(grep -c "interval: no changes" "$W/log" || true)
printf 'idle watch --git, unchanged remote, 60 s at --interval %s: %.2f%% of a core, RSS %.1f MiB (peak %.1f MiB), %d interval passes (targets < 1%%, < 30 MiB)\n' \
  "$IDLE_INTERVAL" "$(echo "($c1 - $c0) / $tck / ($t1 - $t0) * 100" | bc -l)" "$(echo "$rss / 1024" | bc -l)" "$(echo "$hwm / 1024" | bc -l)" "$passes"
