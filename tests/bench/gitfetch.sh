#!/usr/bin/env bash
# Benchmark: fetching a long history. A repository of $COMMITS commits (default 5000, made
# with `git fast-import`; each commit changes fort.toml) against one of 10 commits, same run:
# the first `fort apply --git` (fort's clone is created: the whole history is fetched) and
# then, after one more commit is pushed, the next `fort apply --git` (only the new commit is
# fetched: incremental). Each time is the median of $RUNS runs. The remote is a bare
# repository on disk (file://); the manifest has one kernel from a file in the repository.
#
# Usage: tests/bench/gitfetch.sh [COMMITS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
COMMITS=${1:-5000}
RUNS=${2:-3}
cargo build --release --locked -p fort >/dev/null 2>&1 || cargo build --release --locked -p fort
FORT="$(scripts/cargo-target-dir)/release/fort"
W=$(mktemp -d /tmp/fort-bench-gitfetch.XXXXXX)
trap 'rm -rf "$W"' EXIT
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.org GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.org GIT_CONFIG_NOSYSTEM=1 HOME="$W"

# make_repo DIR N: a bare repository whose main has N commits (fast-import: seconds, not minutes).
make_repo() {
  git init -q --bare -b main "$1"
  {
    for i in $(seq 1 "$2"); do
      body=$(printf '[fort]\nversion = 1\n# revision %d\n[kernel.k]\nurl = "vmlinux"\n' "$i")
      echo "commit refs/heads/main"
      echo "committer bench <bench@example.org> $((1700000000 + i)) +0000"
      echo "data <<EOM"; echo "change $i"; echo "EOM"
      echo "M 100644 inline fort.toml"; echo "data <<EOM"; echo "$body"; echo "EOM"
      echo "M 100644 inline vmlinux"; echo "data <<EOM"; echo "kernel"; echo "EOM"
      echo
    done
  } | git -C "$1" fast-import --quiet
}
ms() {  # ms CMD…: its wall time in ms; a failing CMD stops the bench with its output
  local t; t=$(date +%s%N)
  "$@" >"$W/out" 2>&1 || { echo "failed: $*" >&2; cat "$W/out" >&2; exit 1; }
  echo $(( ($(date +%s%N) - t) / 1000000 ))
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for n in 10 "$COMMITS"; do
  make_repo "$W/r$n.git" "$n"
  first=(); next=()
  for run in $(seq "$RUNS"); do
    S="$W/state-$n-$run"
    first+=("$(ms "$FORT" --state-dir "$S" apply --git "file://$W/r$n.git" --yes)")
    git clone -q "$W/r$n.git" "$W/work-$n-$run"
    ( cd "$W/work-$n-$run" && echo "# one more" >> fort.toml && git commit -qam more && git push -q origin main )
    next+=("$(ms "$FORT" --state-dir "$S" apply --git "file://$W/r$n.git" --yes)")
    st=$("$FORT" --state-dir "$S" status --json)
    grep -q '"subject": "more"' <<<"$st" || { echo "$n: the new commit was not applied" >&2; exit 1; }
    rm -rf "$W/work-$n-$run"
    size=$(du -sk "$S/git/mirror.git" | cut -f1)
  done
  printf '%6d commits: first apply --git (clone) median %5d ms, next apply after one new commit median %5d ms; fort'"'"'s clone %d KiB\n' \
    "$n" "$(median "${first[@]}")" "$(median "${next[@]}")" "$size"
done
