#!/usr/bin/env bash
# Whole-system S3 benchmark against a local moto_server (see the S3 issue for the bars), on one
# real tree (default: the Rust toolchain, about 1.3 GB), side by side:
#   (a) vorpalfs: mount from an empty cache and read 5% of the files (every 20th);
#   (b) vorpalfs pull of the whole artifact into an empty cache;
#   (c) the Vorpal way: download the whole tar.zst, then unpack it;
# plus push, and peak RSS of push and pull of one 4 GiB file (bar: under 300 MiB).
# `rclone mount` (d) is not run: mounting one tar.zst object gives no random access into it, so
# it is no fair comparison; mounting the tree's files would need them uploaded one object each.
#
# Usage: scripts/bench/s3.sh [TREE]   (needs root; moto from scripts/test.sh's venv)
set -euo pipefail
cd "$(dirname "$0")/../.."
tree="${1:-$(rustc --print sysroot)}"
target="${CARGO_TARGET_DIR:-target}"
[ -n "${VORPALFS:-}" ] || cargo build --release --workspace >&2
B="$(realpath "${VORPALFS:-$target/release/vorpalfs}")"
venv="${VORPALFS_VENV:-/var/tmp/vorpalfs-venv}"
[ -x "$venv/bin/moto_server" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q 'moto[server]'; }

work="$(mktemp -d /var/tmp/vorpalfs-bench-s3.XXXXXX)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto=$!
cleanup() {
  for s in a b c d e; do VORPALFS_STORE_DIR="$work/$s" "$B" umount >/dev/null 2>&1 || true; done
  kill $moto 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
until curl -s -o /dev/null "http://127.0.0.1:$port"; do sleep 0.2; done
curl -s -X PUT "http://127.0.0.1:$port/bench" >/dev/null
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
export VORPALFS_S3=s3://bench/v VORPALFS_S3_ENDPOINT="http://127.0.0.1:$port"
py="$venv/bin/python3"
s3py() { "$py" - "$@" <<PY
import boto3, sys
c = boto3.client("s3", endpoint_url="http://127.0.0.1:$port")
op, key, path = sys.argv[1:4]
if op == "put": c.upload_file(path, "bench", key)
else: c.download_file("bench", key, path)
PY
}
now() { date +%s.%N; }
rss() { awk '/Maximum resident/ {printf "%.0f", $6/1024}' "$1"; }
gets() { VORPALFS_STORE_DIR="$1" "$B" --json status | python3 -c 'import json,sys; s=json.load(sys.stdin)["s3"]; print(s["gets"], s["get_bytes"])'; }

echo "tree: $tree ($(du -sb "$tree" | cut -f1) bytes, $(find "$tree" -type f | wc -l) files)"
d=$(VORPALFS_STORE_DIR="$work/a" "$B" store add "$tree" 2>/dev/null)
t0=$(now); VORPALFS_STORE_DIR="$work/a" /usr/bin/time -v "$B" push "$d" 2>"$work/push.time" >/dev/null; t1=$(now)
echo "push: $(echo "$t1 - $t0" | bc) s, peak RSS $(rss "$work/push.time") MiB"

# (c) the Vorpal way
tar -C "$tree" -cf - . | zstd -q -3 -T0 -o "$work/tree.tar.zst"
s3py put tree.tar.zst "$work/tree.tar.zst"
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now); s3py get tree.tar.zst "$work/dl.tar.zst"; t1=$(now)
mkdir "$work/unpacked"; zstd -q -d -c "$work/dl.tar.zst" | tar -C "$work/unpacked" -xf -; t2=$(now)
archive=$(stat -c %s "$work/dl.tar.zst")
c=$(echo "$t2 - $t0" | bc)
echo "(c) Vorpal way: $c s (download $(echo "$t1 - $t0" | bc) s + unpack $(echo "$t2 - $t1" | bc) s), $archive bytes"
rm -rf "$work/unpacked" "$work/dl.tar.zst" "$work/tree.tar.zst"

# (a) lazy mount, read 5% of the files
VORPALFS_STORE_DIR="$work/b" "$B" mount "$work/mnt-b" >/dev/null
(cd "$tree" && find . -type f | sort | awk 'NR % 20 == 0') > "$work/sample"
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now); (cd "$work/mnt-b/$d" && xargs -a "$work/sample" -d '\n' cat > /dev/null); t1=$(now)
a=$(echo "$t1 - $t0" | bc)
echo "(a) vorpalfs lazy, 5% of files ($(wc -l < "$work/sample")): $a s, GETs and bytes: $(gets "$work/b")   -> $(echo "scale=1; $c / $a" | bc)x faster than (c)"

# (b) pull
t0=$(now); VORPALFS_STORE_DIR="$work/c" /usr/bin/time -v "$B" pull "$d" 2>"$work/pull.time" >/dev/null; t1=$(now)
b=$(echo "$t1 - $t0" | bc)
echo "(b) vorpalfs pull: $b s, peak RSS $(rss "$work/pull.time") MiB   -> $(echo "scale=2; $c / $b" | bc)x (c)"

# 4 GiB file: push and pull memory
mkdir -p "$work/big"; head -c $((4 << 30)) /dev/urandom > "$work/big/file"
d4=$(VORPALFS_STORE_DIR="$work/d" "$B" store add "$work/big" 2>/dev/null); rm -rf "$work/big"
t0=$(now); VORPALFS_STORE_DIR="$work/d" /usr/bin/time -v "$B" push "$d4" 2>"$work/push4.time" >/dev/null; t1=$(now)
t2=$(now); VORPALFS_STORE_DIR="$work/e" /usr/bin/time -v "$B" pull "$d4" 2>"$work/pull4.time" >/dev/null; t3=$(now)
echo "4 GiB file: push $(echo "$t1 - $t0" | bc) s, peak RSS $(rss "$work/push4.time") MiB; pull $(echo "$t3 - $t2" | bc) s, peak RSS $(rss "$work/pull4.time") MiB"
