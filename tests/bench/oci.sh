#!/usr/bin/env bash
# Benchmark: pulling and flattening a ~200 MiB, 3-layer OCI image from a registry on loopback
# into an ext4 image — `fort apply` of an image rootfs and its template (fresh state dir) vs
#   skopeo copy docker://… oci:DIR  +  umoci raw unpack  +  mke2fs -d
# on the same image, alternating, in the same run. Then a second template from the same image
# (another rootfs pinning it by digest): the blobs it fetched from the registry (access log).
#
# Usage: tests/bench/oci.sh [RUNS]     (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
cargo build --release --locked -p fort >/dev/null 2>&1 || cargo build --release --locked -p fort
FORT="$(scripts/cargo-target-dir)/release/fort"
for t in docker-registry skopeo umoci mke2fs; do
  command -v "$t" >/dev/null || { echo "$t is missing (scripts/install-deps installs it)" >&2; exit 1; }
done

W=$(mktemp -d /tmp/fort-bench-oci.XXXXXX)
REG_PID=
cleanup() { [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

# The image: layer 1 a base (random data + many small text files), layer 2 more of both,
# layer 3 changes (a whiteout, an opaque directory, new files).
L="$W/layout"; mkdir -p "$L/blobs/sha256"
mk() { mkdir -p "$W/l$1"; }
mk 1; mk 2; mk 3
mkdir -p "$W/l1/usr/share/data" "$W/l1/etc/conf" "$W/l1/opt/app"
for i in $(seq 90); do head -c 1M /dev/urandom > "$W/l1/usr/share/data/blob$i"; done
for i in $(seq 4000); do seq 1 2000 > "$W/l1/etc/conf/file$i"; done
for i in $(seq 100); do echo old > "$W/l1/opt/app/old$i"; done
mkdir -p "$W/l2/usr/lib/big" "$W/l2/usr/share/doc"
for i in $(seq 70); do head -c 1M /dev/urandom > "$W/l2/usr/lib/big/lib$i.so"; done
for i in $(seq 2000); do seq 1 3000 > "$W/l2/usr/share/doc/doc$i"; done
mkdir -p "$W/l3/opt/app" "$W/l3/etc/conf" "$W/l3/srv"
touch "$W/l3/opt/app/.wh..wh..opq" "$W/l3/etc/conf/.wh.file1"
for i in $(seq 30); do head -c 1M /dev/urandom > "$W/l3/srv/data$i"; done
echo new > "$W/l3/opt/app/new"
layers=(); diffs=()
for n in 1 2 3; do
  tar -C "$W/l$n" --numeric-owner -cf "$W/l$n.tar" .
  diffs+=("sha256:$(sha256sum "$W/l$n.tar" | cut -d' ' -f1)")
  gzip -6 "$W/l$n.tar"
  d=$(sha256sum "$W/l$n.tar.gz" | cut -d' ' -f1)
  s=$(stat -c %s "$W/l$n.tar.gz")
  mv "$W/l$n.tar.gz" "$L/blobs/sha256/$d"
  layers+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$d\",\"size\":$s}")
  rm -rf "$W/l$n"
done
cfg="{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Env\":[\"PATH=/usr/bin:/bin\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"${diffs[0]}\",\"${diffs[1]}\",\"${diffs[2]}\"]}}"
printf '%s' "$cfg" > "$W/cfg"; cd_=$(sha256sum "$W/cfg" | cut -d' ' -f1); cs=$(stat -c %s "$W/cfg"); mv "$W/cfg" "$L/blobs/sha256/$cd_"
man="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$cd_\",\"size\":$cs},\"layers\":[${layers[0]},${layers[1]},${layers[2]}]}"
printf '%s' "$man" > "$W/man"; md=$(sha256sum "$W/man" | cut -d' ' -f1); ms=$(stat -c %s "$W/man"); mv "$W/man" "$L/blobs/sha256/$md"
echo '{"imageLayoutVersion":"1.0.0"}' > "$L/oci-layout"
echo "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$md\",\"size\":$ms,\"annotations\":{\"org.opencontainers.image.ref.name\":\"v1\"}}]}" > "$L/index.json"
echo "image: $(($(du -sb "$L/blobs" | cut -f1) / 1048576)) MiB compressed in 3 layers"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$W/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $W/storage
http:
  addr: 127.0.0.1:$PORT
YML
docker-registry serve "$W/registry.yml" > "$W/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
skopeo copy -q --dest-tls-verify=false "oci:$L:v1" "docker://127.0.0.1:$PORT/bench:v1"
REF="127.0.0.1:$PORT/bench:v1"

manifest() { # $1 dir
  mkdir -p "$1"
  cat > "$1/fort.toml" <<TOML
[fort]
version = 1
[rootfs.r]
image = "$REF"
[template.t]
rootfs = "r"
size = "1GiB"
guest_agent = false
TOML
}
now() { date +%s.%N; }
base=(); fort=()
for i in $(seq "$RUNS"); do
  rm -rf "$W/pulled" "$W/rootfs" "$W/base.img"; sync
  t0=$(now)
  skopeo copy -q --src-tls-verify=false "docker://$REF" "oci:$W/pulled:v1"
  umoci raw unpack --image "$W/pulled:v1" "$W/rootfs" >/dev/null 2>&1
  mke2fs -q -F -t ext4 -E root_owner=0:0 -d "$W/rootfs" "$W/base.img" 1G >/dev/null
  t1=$(now)
  base+=("$(echo "$t1 - $t0" | bc -l)")

  rm -rf "$W/m" "$W/state"; manifest "$W/m"; sync
  t0=$(now)
  "$FORT" -f "$W/m" --state-dir "$W/state" apply --yes >/dev/null
  t1=$(now)
  fort+=("$(echo "$t1 - $t0" | bc -l)")
  echo "run $i: baseline ${base[-1]}s, fort ${fort[-1]}s"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
b=$(median "${base[@]}"); f=$(median "${fort[@]}")
echo
echo "median baseline (skopeo copy + umoci raw unpack + mke2fs -d): ${b}s"
echo "median fort apply (pull + flatten + mke2fs -d):              ${f}s"
echo "ratio fort/baseline: $(echo "$f / $b" | bc -l | cut -c1-5)"

# A second template from the same layers: a rootfs pinning the image by digest (another size,
# so it is really built: layers flattened again from the cache).
gets() { grep -c '"GET /v2/bench/blobs/sha256:[0-9a-f]* HTTP/1.1" 200' "$W/registry.log" || true; }
bytes() { grep '"GET /v2/bench/blobs/sha256:[0-9a-f]* HTTP/1.1" 200' "$W/registry.log" | awk '{s+=$10} END {print s+0}'; }
g0=$(gets); b0=$(bytes)
cat >> "$W/m/fort.toml" <<TOML
[rootfs.r2]
image = "127.0.0.1:$PORT/bench@sha256:$md"
[template.t2]
rootfs = "r2"
size = "1536MiB"
guest_agent = false
TOML
t0=$(now)
"$FORT" -f "$W/m" --state-dir "$W/state" apply --yes >/dev/null
t1=$(now)
echo
echo "second template from the same layers: $(($(gets) - g0)) blobs, $(($(bytes) - b0)) bytes fetched from the registry; apply $(echo "$t1 - $t0" | bc -l | cut -c1-5)s"
