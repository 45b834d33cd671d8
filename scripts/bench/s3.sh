#!/usr/bin/env bash
# Whole-system S3 benchmark on one real tree (default: the Rust toolchain, about 1.3 GB), all
# against the same S3 server on 127.0.0.1 behind a WAN link (vorpalfs-wan-proxy: LATENCY_MS
# per request, default 20; RATE_MBPS per connection, default 100; 0 disables each), side by side:
#   (e) the compiler's workloads, each from an empty cache: its first exec (`rustc --version`),
#       compiling and running a small program, and reading the Rust book's 659 small files one
#       after another (as an interpreter importing its library would) — on the lazy mount, the
#       Vorpal way (one GET of the tar.zst, unpack, run) and a smarter download (ten ranged GETs
#       at once, unpack, run); each once more on a second empty host after the first pushed
#       the access profile of that workload, and on a third after the first repacked its hot
#       chunks (then both undone, so each row has its own);
#   (a) vorpalfs: mount from an empty cache and read 5% of the files (every 20th, sorted), 8 at
#       a time as a build tool would;
#   (b) vorpalfs pull of the whole artifact into an empty cache;
#   (c) the Vorpal way: download the whole tar.zst, then unpack it;
#   (d) rclone mount of the tree uploaded one object per file, reading the same 5% the same way
#       (a mount of one tar.zst object gives no random access into it: no fair comparison);
# plus push, and time and peak RSS of push and pull of one 4 GiB file (bar: under 300 MiB).
# Every read starts with the kernel's caches dropped. Bars (the S3 issue): (a) at least 10x
# faster than (c); (b) no slower than (c).
#
# Usage: scripts/bench/s3.sh [TREE]     (needs root)
#   S3_SERVER=s3s (default): s3s-fs, a file-backed Rust server with real ranged reads, installed
#                            into /var/tmp/vorpalfs-tools on first use, run with nodelay.c
#                            preloaded (it leaves Nagle on: 40 ms per GET otherwise);
#   S3_SERVER=moto:          moto_server from scripts/test.sh's venv (serves a ranged GET by
#                            reading the whole object in Python: slow for large objects).
#   BIG_FILE_GIB=0 skips the 4 GiB file; RCLONE=0 skips (d); READERS=N sets the parallelism
#   of (a) and (d).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/record.sh
tree="${1:-$(rustc --print sysroot)}"
server="${S3_SERVER:-s3s}"
big_gib="${BIG_FILE_GIB:-4}"
readers="${READERS:-8}"
latency_ms="${LATENCY_MS:-20}"
rate_mbps="${RATE_MBPS:-100}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vorpalfs-target}"
[ -n "${VORPALFS:-}" ] || cargo build --release --workspace >&2
B="$(realpath "${VORPALFS:-$CARGO_TARGET_DIR/release/vorpalfs}")"
venv="${VORPALFS_VENV:-/var/tmp/vorpalfs-venv}"
tools=/var/tmp/vorpalfs-tools
[ -x "$venv/bin/moto_server" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q 'moto[server]'; }
for t in rclone zstd bc fusermount3; do
  command -v $t >/dev/null || apt-get install -y -qq rclone zstd bc fuse3 >/dev/null
done
if [ "$server" = s3s ] && [ ! -x "$tools/bin/s3s-fs" ]; then
  echo "installing s3s-fs into $tools (a few minutes, once)" >&2
  CARGO_TARGET_DIR="$tools/target" cargo install s3s-fs --version 0.14.1 --features binary --locked \
    --root "$tools" >&2
fi
[ "$server" != s3s ] || gcc -O2 -shared -fPIC -o "$tools/libnodelay.so" scripts/bench/nodelay.c -ldl

work="$(mktemp -d /var/tmp/vorpalfs-bench-s3.XXXXXX)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=testtesttest AWS_REGION=us-east-1
if [ "$server" = s3s ]; then
  mkdir "$work/s3root"
  LD_PRELOAD="$tools/libnodelay.so" "$tools/bin/s3s-fs" --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$work/s3root" >"$work/server.log" 2>&1 &
else
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/server.log" 2>&1 &
fi
srv=$!
# The WAN link in front of the server: everything below talks to it.
until curl -s -o /dev/null "http://127.0.0.1:$port"; do sleep 0.2; done
pport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
coproc WAN { exec "$CARGO_TARGET_DIR/release/vorpalfs-wan-proxy" "$pport" "$port" "$latency_ms" "$rate_mbps"; }
wan_pid=$WAN_PID
# `link`: connections requests bytes_up bytes_down through the link so far.
link() { echo >&"${WAN[1]}"; read -r -u "${WAN[0]}" a b c d; echo "$a $b $c $d"; }
cleanup() {
  for s in a b c d e f; do VORPALFS_STORE_DIR="$work/$s" "$B" umount >/dev/null 2>&1 || true; done
  fusermount3 -u "$work/mnt-d" 2>/dev/null || true
  kill $srv $wan_pid 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
endpoint="http://127.0.0.1:$pport"
until curl -s -o /dev/null "$endpoint"; do sleep 0.2; done
py="$venv/bin/python3"
s3py() { "$py" - "$endpoint" "$@" <<'PY'
import boto3, sys
endpoint, op = sys.argv[1:3]
c = boto3.client("s3", endpoint_url=endpoint)
if op == "mb": c.create_bucket(Bucket="bench")
elif op == "put": c.upload_file(sys.argv[4], "bench", sys.argv[3])
elif op == "get": c.download_file("bench", sys.argv[3], sys.argv[4])
elif op == "get1":
    # One GET, one stream (as Vorpal fetches an artifact).
    body = c.get_object(Bucket="bench", Key=sys.argv[3])["Body"]
    with open(sys.argv[4], "wb") as f:
        for part in iter(lambda: body.read(1 << 20), b""):
            f.write(part)
elif op == "rm": c.delete_object(Bucket="bench", Key=sys.argv[3])
elif op == "get10":
    # Ten ranged GETs at once.
    from boto3.s3.transfer import TransferConfig
    size = c.head_object(Bucket="bench", Key=sys.argv[3])["ContentLength"]
    cfg = TransferConfig(max_concurrency=10, multipart_threshold=1, multipart_chunksize=max(size // 10 + 1, 5 << 20))
    c.download_file("bench", sys.argv[3], sys.argv[4], Config=cfg)
PY
}
s3py mb
export VORPALFS_S3=s3://bench/v VORPALFS_S3_ENDPOINT="$endpoint"
now() { date +%s.%N; }
rss() { awk '/Maximum resident/ {printf "%.0f", $6/1024}' "$1"; }
s3stat() { VORPALFS_STORE_DIR="$1" "$B" --json status | python3 -c 'import json,sys; s=json.load(sys.stdin)["s3"]; print(s["gets"], s["get_bytes"])'; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
sec() { echo "$2 - $1" | bc; }
ratio() { echo "scale=1; $1 / $2" | bc; }
# The sample in runs of 100 files per `cat`, $readers at once (fewer processes: spawning 130 of
# them cost more than reading the sample from the page cache).
read_sample() { (cd "$1" && xargs -a "$work/sample" -d '\n' -P "$2" -n 100 cat > /dev/null); }

echo "tree: $tree ($(du -sb "$tree" | cut -f1) bytes, $(find "$tree" -type f | wc -l) files); server: $server; cores: $(nproc)"
echo "link: ${latency_ms} ms a request, ${rate_mbps} MB/s a connection"
(cd "$tree" && find . -type f | sort | awk 'NR % 20 == 0') > "$work/sample"
sample_bytes=$(cd "$tree" && xargs -a "$work/sample" -d '\n' stat -c %s | awk '{s += $1} END {print s}')
echo "sample: $(wc -l < "$work/sample") files, $sample_bytes bytes; $readers readers"

d=$(VORPALFS_STORE_DIR="$work/a" "$B" store add "$tree" 2>/dev/null)
t0=$(now); VORPALFS_STORE_DIR="$work/a" /usr/bin/time -v "$B" push "$d" 2>"$work/push.time" >/dev/null; t1=$(now)
echo "push: $(sec "$t0" "$t1") s, peak RSS $(rss "$work/push.time") MiB"
record s3 push_seconds "$(sec "$t0" "$t1")" s
record s3 push_peak_rss "$(rss "$work/push.time")" MiB

# (c) the Vorpal way: one archive at zstd's default level, downloaded whole, then unpacked.
tar -C "$tree" -cf - . | zstd -q -3 -T0 -o "$work/tree.tar.zst"
s3py put tree.tar.zst "$work/tree.tar.zst"
rm "$work/tree.tar.zst"
cold
t0=$(now); s3py get1 tree.tar.zst "$work/dl.tar.zst"; t1=$(now)
mkdir "$work/unpacked"; zstd -q -d -c "$work/dl.tar.zst" | tar -C "$work/unpacked" -xf -; t2=$(now)
archive=$(stat -c %s "$work/dl.tar.zst")
c=$(sec "$t0" "$t2")
record s3 vorpal_way_seconds "$c" s
get1=$(sec "$t0" "$t1"); unpack=$(sec "$t1" "$t2")
echo "(c) Vorpal way: $c s (download $get1 s + unpack $unpack s), $archive bytes transferred"
rm "$work/dl.tar.zst"
cold
t0=$(now); s3py get10 tree.tar.zst "$work/dl.tar.zst"; t1=$(now)
get10=$(sec "$t0" "$t1")
echo "    smarter download (ten ranged GETs at once): $get10 s"
rm "$work/dl.tar.zst"

# (e) The compiler's workloads, when the tree is a Rust toolchain.
if [ -x "$tree/bin/rustc" ]; then
  printf 'fn main() {\n    let v: Vec<u64> = (1..=10).map(|x| x * x).collect();\n    println!("{:?}", v);\n}\n' > "$work/hello.rs"
  w_exec() { "$1/bin/rustc" --version > /dev/null; }
  w_compile() { "$1/bin/rustc" -o "$work/hello" "$work/hello.rs" && "$work/hello" > /dev/null; }
  w_small() { (cd "$1/share/doc/rust/html/book" && find . -type f | sort | xargs cat > /dev/null); }
  # run_on HOST W: workload W on a new empty host (store and mount named HOST) from cold caches,
  # through the link; sets took, run_gets, run_bytes. The host stays mounted.
  run_on() {
    rm -rf "$work/$1"
    VORPALFS_STORE_DIR="$work/$1" "$B" mount "$work/mnt-$1" > /dev/null
    cold
    read -r _ r0 _ b0 <<<"$(link)"
    t0=$(now); "w_$2" "$work/mnt-$1/$d"; t1=$(now)
    read -r _ r1 _ b1 <<<"$(link)"
    took=$(sec "$t0" "$t1"); run_gets=$((r1 - r0)); run_bytes=$((b1 - b0))
  }
  for w in exec compile small; do
    cold
    t0=$(now); "w_$w" "$work/unpacked"; t1=$(now)
    local_run=$(sec "$t0" "$t1")
    vorpal=$(echo "$get1 + $unpack + $local_run" | bc)
    smart=$(echo "$get10 + $unpack + $local_run" | bc)
    run_on e "$w"
    lazy=$took
    VORPALFS_STORE_DIR="$work/e" "$B" profile push "$d" 2>/dev/null
    s3py get "v/roots/$d" "$work/root.obj"
    echo "(e) $w: vorpalfs lazy $lazy s ($run_gets requests, $run_bytes bytes) | Vorpal way $vorpal s -> $(ratio "$vorpal" "$lazy")x | smarter download $smart s -> $(ratio "$smart" "$lazy")x"
    record s3 "wan_${w}_lazy" "$lazy" s "$(ratio "$vorpal" "$lazy")"
    record s3 "wan_${w}_vs_smarter" "$lazy" s "$(ratio "$smart" "$lazy")"
    record s3 "wan_${w}_requests" "$run_gets" requests
    record s3 "wan_${w}_bytes" "$run_bytes" bytes
    # A second empty host, with the profile the first pushed: the clock starts at the lookup.
    # Then, after the first host repacked the hot chunks, a third.
    for host in second repacked; do
      if [ "$host" = repacked ]; then
        VORPALFS_STORE_DIR="$work/e" "$B" profile repack "$d"
      fi
      run_on f "$w"
      second=$took
      VORPALFS_STORE_DIR="$work/f" "$B" umount > /dev/null
      label="second host, with the profile"; key="second_host"
      [ "$host" = repacked ] && label="    and after a repack" && key="repacked"
      echo "    $label: $second s ($run_gets requests, $run_bytes bytes) | Vorpal way -> $(ratio "$vorpal" "$second")x | smarter download -> $(ratio "$smart" "$second")x"
      record s3 "wan_${w}_$key" "$second" s "$(ratio "$vorpal" "$second")"
      record s3 "wan_${w}_${key}_vs_smarter" "$second" s "$(ratio "$smart" "$second")"
      record s3 "wan_${w}_${key}_bytes" "$run_bytes" bytes
    done
    # Each row on its own: the root object as pushed, no profile.
    VORPALFS_STORE_DIR="$work/e" "$B" umount > /dev/null
    s3py put "v/roots/$d" "$work/root.obj"
    s3py rm "v/profiles/$d"
  done
fi
rm -rf "$work/unpacked"

# (a) lazy mount from an empty store, read the sample ($readers at once, then one at a time).
for n in "$readers" 1; do
  rm -rf "$work/b"
  VORPALFS_STORE_DIR="$work/b" "$B" mount "$work/mnt-b" >/dev/null
  cold
  t0=$(now); read_sample "$work/mnt-b/$d" "$n"; t1=$(now)
  read -r gets bytes <<<"$(s3stat "$work/b")"
  pid=$(VORPALFS_STORE_DIR="$work/b" "$B" --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
  t=$(sec "$t0" "$t1"); [ "$n" = "$readers" ] && a=$t
  echo "(a) vorpalfs lazy, 5% of files, $n reader(s): $t s, $gets GETs, $bytes bytes transferred, daemon peak RSS $(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$pid/status") MiB -> $(ratio "$c" "$t")x faster than (c)"
  record s3 "lazy_sample_${n}_readers" "$t" s "$(ratio "$c" "$t")"
  record s3 "lazy_sample_${n}_readers_gets" "$gets" requests
  VORPALFS_STORE_DIR="$work/b" "$B" umount >/dev/null
done

# (b) full pull into an empty store.
cold
t0=$(now); VORPALFS_STORE_DIR="$work/c" /usr/bin/time -v "$B" --json pull "$d" 2>"$work/pull.time" >"$work/pull.json"; t1=$(now)
b=$(sec "$t0" "$t1")
stored=$(du -sb "$work/c/packs" | cut -f1)
record s3 pull_seconds "$b" s "$(ratio "$c" "$b")"
record s3 pull_peak_rss "$(rss "$work/pull.time")" MiB
echo "(b) vorpalfs pull: $b s, $stored bytes of packs fetched, peak RSS $(rss "$work/pull.time") MiB -> $(ratio "$c" "$b")x faster than (c)"

if [ "${RCLONE:-1}" != 0 ]; then
# (d) rclone mount of the tree's files, one object each (uploaded first, not timed).
# A bucket of its own: s3s-fs answers a HEAD of a "directory" key with 500, which rclone retries.
# rclone's SDK refuses a custom CA bundle on a plain-HTTP endpoint, so AWS_CA_BUNDLE is unset.
export RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other RCLONE_CONFIG_BENCH_ENDPOINT="$endpoint" \
  RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
  RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true
rc() { env -u AWS_CA_BUNDLE rclone "$@"; }
rc mkdir bench:files 2>"$work/rclone-copy.log"
rc copy "$tree" bench:files --transfers 16 --checkers 16 --s3-disable-checksum 2>>"$work/rclone-copy.log" \
  || { cat "$work/rclone-copy.log" >&2; exit 1; }
mkdir -p "$work/mnt-d"
rc mount bench:files "$work/mnt-d" --read-only --daemon --vfs-cache-mode off --dir-cache-time 1h \
  --cache-dir "$work/rclone-cache" 2>"$work/rclone-mount.log" || { cat "$work/rclone-mount.log" >&2; exit 1; }
until mountpoint -q "$work/mnt-d"; do sleep 0.2; done
cold
t0=$(now); read_sample "$work/mnt-d" "$readers"; t1=$(now)
dd=$(sec "$t0" "$t1")
record s3 vs_rclone_mount "$a" s "$(ratio "$dd" "$a")"
echo "(d) rclone mount, 5% of files: $dd s (at least $sample_bytes bytes transferred) -> vorpalfs (a) is $(ratio "$dd" "$a")x faster"
fusermount3 -u "$work/mnt-d"
fi

if [ "$big_gib" != 0 ]; then
  mkdir -p "$work/big"; head -c $((big_gib << 30)) /dev/urandom > "$work/big/file"
  d4=$(VORPALFS_STORE_DIR="$work/d" "$B" store add "$work/big" 2>/dev/null); rm -rf "$work/big"
  t0=$(now); VORPALFS_STORE_DIR="$work/d" /usr/bin/time -v "$B" push "$d4" 2>"$work/push4.time" >/dev/null; t1=$(now)
  rm -rf "$work/d"
  t2=$(now); VORPALFS_STORE_DIR="$work/e" /usr/bin/time -v "$B" pull "$d4" 2>"$work/pull4.time" >/dev/null; t3=$(now)
  record s3 big_file_push_peak_rss "$(rss "$work/push4.time")" MiB
  record s3 big_file_pull_peak_rss "$(rss "$work/pull4.time")" MiB
  echo "$big_gib GiB file: push $(sec "$t0" "$t1") s, peak RSS $(rss "$work/push4.time") MiB; pull $(sec "$t2" "$t3") s, peak RSS $(rss "$work/pull4.time") MiB"
fi
