#!/usr/bin/env bash
# Benchmark: `fort port-forward` throughput. A server sends MIB MiB per connection and a
# client reads it to EOF, timed from connect to EOF; (1) straight over TCP loopback and
# (2) through `fort port-forward` + the guest agent on a unix socket (agent outside a VM:
# TCP -> fort -> unix socket -> agent -> TCP), alternately in the same run, the same client
# and server programs both ways. Reports MiB/s of both, the medians and their ratio (target:
# forward within 2x of plain). Loopback only; no root needed.
#
# Usage: tests/bench/port_forward.sh [RUNS] [MIB]   (default 5 runs of 1024 MiB)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-5}
MIB=${2:-1024}
cargo build --release --locked -p fort -p fort-guest-agent >/dev/null 2>&1 ||
  cargo build --release --locked -p fort -p fort-guest-agent
T="$(scripts/cargo-target-dir)/release"
W=$(mktemp -d /tmp/fort-bench-pf.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"' EXIT

# The "guest's" server: MIB MiB per connection from one 1 MiB buffer, then close.
python3 - "$MIB" >"$W/server.port" <<'PY' &
import socket, sys, threading
mib = int(sys.argv[1])
buf = memoryview(b"\x5a" * (1 << 20))
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(64)
print(l.getsockname()[1], flush=True)
def serve(c):
    with c:
        try:
            for _ in range(mib):
                c.sendall(buf)
        except OSError:
            pass
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
pids+=($!)
"$T/fort-guest-agent" --listen "unix:$W/agent.sock" 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do [ -s "$W/server.port" ] && [ -S "$W/agent.sock" ] && break; sleep 0.1; done
SERVER=$(cat "$W/server.port")
"$T/fort" port-forward --connect "unix:$W/agent.sock" "0:$SERVER" >"$W/fwd.out" &
pids+=($!)
for _ in $(seq 100); do [ -s "$W/fwd.out" ] && break; sleep 0.1; done
FWD=$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$W/fwd.out")

# get PORT: MiB/s from connect to EOF (checks every byte arrived).
get() {
  python3 - "$1" "$MIB" <<'PY'
import socket, sys, time
port, mib = int(sys.argv[1]), int(sys.argv[2])
buf = bytearray(1 << 20)
t0 = time.monotonic()
s = socket.create_connection(("127.0.0.1", port))
n = 0
while True:
    k = s.recv_into(buf)
    if k == 0:
        break
    n += k
dt = time.monotonic() - t0
if n != mib << 20:
    sys.exit(f"got {n} bytes, expected {mib << 20}")
print(f"{mib / dt:.1f}")
PY
}

plain=(); fwd=()
for i in $(seq "$RUNS"); do
  plain+=("$(get "$SERVER")")
  fwd+=("$(get "$FWD")")
  printf 'run %d: plain TCP loopback %s MiB/s, fort port-forward %s MiB/s\n' "$i" "${plain[-1]}" "${fwd[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mp=$(median "${plain[@]}"); mf=$(median "${fwd[@]}")
printf '\nmedian of %d x %d MiB: plain %s MiB/s, port-forward %s MiB/s, plain/forward %.2f (target <= 2)\n' \
  "$RUNS" "$MIB" "$mp" "$mf" "$(echo "$mp / $mf" | bc -l)"
