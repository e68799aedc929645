#!/usr/bin/env bash
# Fuzz every cargo-fuzz target in fuzz/ for SECONDS each and report, per target, how many
# inputs it ran and whether it crashed; exits non-zero if any did (docs/fuzzing.md).
#
#   tests/fuzz.sh SECONDS [TARGET...]     e.g. tests/fuzz.sh 600, tests/fuzz.sh 60 unpack
#
# FUZZ_JOBS=2 runs two targets at a time (default 1). Needs the nightly toolchain; installs
# cargo-fuzz from crates.io when it is missing. New corpus entries go to fuzz/corpus/TARGET
# (fuzz/seeds/TARGET is read as well), crashing inputs and the logs to fuzz/artifacts/TARGET.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:?usage: tests/fuzz.sh SECONDS [TARGET...]}
shift
if [[ ! $secs =~ ^[0-9]+$ ]] || ((secs == 0)); then
    echo "fuzz.sh: SECONDS must be a positive whole number, got '$secs'" >&2
    exit 2
fi
if (($#)); then
    targets=("$@")
else
    targets=(manifest agent_rpc unpack vsock_handshake)
fi
parallel=${FUZZ_JOBS:-1}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# The fuzz crate is its own workspace with its own target dir, whatever the caller uses.
export CARGO_TARGET_DIR="$PWD/fuzz/target"
echo "fuzz.sh: building ${targets[*]}"
for t in "${targets[@]}"; do
    nice -n 10 cargo +nightly fuzz build --fuzz-dir fuzz "$t"
done

run() {
    local t=$1 dir=fuzz/artifacts/$1
    mkdir -p "fuzz/corpus/$t" "$dir"
    local dict=()
    [[ -f fuzz/dict/$t.dict ]] && dict=("-dict=fuzz/dict/$t.dict")
    local rc=0
    nice -n 10 cargo +nightly fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "${dict[@]}" >"$dir/run.log" 2>&1 || rc=$?
    echo "$rc" >"$dir/run.rc"
}

for t in "${targets[@]}"; do
    while (($(jobs -rp | wc -l) >= parallel)); do
        wait -n || true
    done
    echo "fuzz.sh: $t for ${secs}s"
    run "$t" &
done
wait

failed=0
printf '%-16s %8s %14s  %s\n' target seconds executions result
for t in "${targets[@]}"; do
    log=fuzz/artifacts/$t/run.log
    rc=$(cat "fuzz/artifacts/$t/run.rc")
    # Final stats when libFuzzer got to print them, else its last status line ("#N ...").
    execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | tail -n1 | grep -oE '[0-9]+$' ||
        grep -oE '^#[0-9]+' "$log" | tail -n1 | tr -d '#' || true)
    if [[ $rc == 0 ]]; then
        result=ok
    else
        failed=1
        artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n1 | sed 's/Test unit written to //' || true)
        result="CRASHED (exit $rc${artifact:+, input $artifact}; log $log)"
    fi
    printf '%-16s %8s %14s  %s\n' "$t" "$secs" "${execs:-?}" "$result"
done
exit "$failed"
