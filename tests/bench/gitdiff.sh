#!/usr/bin/env bash
# Benchmark: `fort diff A..B` of two revisions of a 10,000-resource manifest (a git repository
# made here), against two `fort validate` runs of the same revisions (each checked out into a
# directory of its own), interleaved in the same run. Targets: diff under 1 s, and within 2.5x
# of the two validates together.
#
# Revision A: a kernel, a rootfs, a template, a network and 4,998 VMs with inline roots (10,000
# resources). Revision B: 100 VMs with more memory (restart), 50 removed, 50 added.
#
# Usage: tests/bench/gitdiff.sh [ROUNDS]   (default 9; medians are printed)
#        FORT_BIN=path/to/release/fort tests/bench/gitdiff.sh   (no build)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-9}
if [ -n "${FORT_BIN:-}" ]; then   # a release binary built already (skips the build)
  FORT=$FORT_BIN
else
  cargo build --release --locked -p fort >/dev/null 2>&1 || cargo build --release --locked -p fort
  FORT="$(scripts/cargo-target-dir)/release/fort"   # where cargo put it (CARGO_TARGET_DIR respected)
fi
W=$(mktemp -d /tmp/fort-bench-gitdiff.XXXXXX)
trap 'rm -rf "$W"' EXIT
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid

manifest() {  # manifest REV: the 10,000-resource manifest of revision A or B
  printf '[fort]\nversion = 1\n\n[kernel.k]\nurl = "/srv/vmlinux"\n\n[rootfs.r]\nurl = "/srv/rootfs.tar"\n\n'
  printf '[template.t]\nrootfs = "r"\nsize = "1GiB"\n\n[network.lan]\ncidr = "10.0.0.0/16"\nnat = true\n\n'
  awk -v rev="$1" 'BEGIN {
    for (i = 0; i < 4998; i++) {
      if (rev == "B" && i >= 4948) continue          # 50 removed
      mem = (rev == "B" && i < 100) ? "512MiB" : "256MiB"   # 100 restarted
      printf "[vm.v%d]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nmemory = \"%s\"\n\n", i, mem
    }
    if (rev == "B") for (i = 0; i < 50; i++)       # 50 added
      printf "[vm.new%d]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nmemory = \"256MiB\"\n\n", i
  }'
}

git init -q -b main "$W/repo"
manifest A > "$W/repo/fort.toml"
git -C "$W/repo" add -A && git -C "$W/repo" commit -q -m A
manifest B > "$W/repo/fort.toml"
git -C "$W/repo" commit -q -am B
# The same revisions as plain directories, for validate.
for rev in A B; do
  mkdir "$W/$rev"
  git -C "$W/repo" show "HEAD$([ $rev = A ] && echo '~1'):fort.toml" > "$W/$rev/fort.toml"
done
resources=$("$FORT" -f "$W/A/fort.toml" validate --host bench --json | grep -c '"vm\.\|"drive\.\|"kernel\.\|"rootfs\.\|"template\.\|"network\.')
"$FORT" diff -C "$W/repo" HEAD~1..HEAD --host bench | tail -1

now() { date +%s%N; }
ms() { echo "($2 - $1) / 1000000" | bc -l; }
d=(); v=(); r=()
for i in $(seq "$ROUNDS"); do
  t0=$(now); "$FORT" diff -C "$W/repo" HEAD~1..HEAD --host bench >/dev/null; t1=$(now)
  "$FORT" -f "$W/A/fort.toml" validate --host bench >/dev/null
  "$FORT" -f "$W/B/fort.toml" validate --host bench >/dev/null; t2=$(now)
  d+=("$(ms "$t0" "$t1")"); v+=("$(ms "$t1" "$t2")")
  r+=("$(echo "($t1 - $t0) / ($t2 - $t1)" | bc -l)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf 'fort diff of two revisions of a %d-resource manifest, %d rounds: median %.0f ms (max %.0f ms); two fort validate: median %.0f ms; diff / 2 validates: median %.2f (targets: < 1000 ms, <= 2.5)\n' \
  "$resources" "$ROUNDS" "$(median "${d[@]}")" "$(printf '%s\n' "${d[@]}" | sort -g | tail -1)" "$(median "${v[@]}")" "$(median "${r[@]}")"
