#!/usr/bin/env bash
# Profiles vorpalfs and draws a flamegraph, in one command:
#
#   scripts/profile.sh ingest [TREE]     `store add` of TREE (default: the Rust toolchain)
#   scripts/profile.sh read [TREE]       the daemon while every file of TREE is read cold
#   scripts/profile.sh build [DIR]       the daemon while DIR (default examples/multi) is rebuilt
#   scripts/profile.sh -- CMD [ARGS...]  any command
#
# Writes profile/<what>.svg (and the raw data beside it) in the checkout and prints its path.
# Uses `perf record` (CPU-clock samples, DWARF call graphs) where the machine allows it, else
# `valgrind --tool=callgrind` (instruction counts; open profile/<what>.callgrind in
# kcachegrind or read `callgrind_annotate`). Flamegraphs are drawn with inferno, installed into
# /var/tmp/vorpalfs-tools on first use. Needs root (perf, drop_caches, mounts).
#
# For a timeline of the stages (ingest walk/data/trees/commit, FUSE operations, S3 fetches,
# build phases) instead, run any command with VORPALFS_TRACE=/tmp/trace.json and open the file in
# chrome://tracing or https://ui.perfetto.dev.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vorpalfs-target}"
tools=/var/tmp/vorpalfs-tools
what="${1:-}"; shift || true
[ -n "$what" ] || { sed -n '2,17p' "$0"; exit 2; }
cargo build --release -p vorpalfs >&2
bin="$(realpath "$CARGO_TARGET_DIR/release/vorpalfs")"
out="$PWD/profile"; mkdir -p "$out"
work="$(mktemp -d /var/tmp/vorpalfs-profile.XXXXXX)"
cleanup() { VORPALFS_STORE_DIR="$work/store" "$bin" umount >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

command -v perf >/dev/null || apt-get install -y -qq linux-perf >/dev/null 2>&1 || true
use_perf=0
if command -v perf >/dev/null && perf record -q -e cpu-clock -o "$work/probe.data" -- true >/dev/null 2>&1; then
  use_perf=1
  if [ ! -x "$tools/bin/inferno-flamegraph" ]; then
    echo "installing inferno into $tools (once)" >&2
    CARGO_TARGET_DIR="$tools/target" cargo install inferno --locked --root "$tools" >&2
  fi
fi

# profile NAME CMD...: runs CMD under the profiler (CMD's own process and its children).
profile() {
  local name=$1; shift
  if [ $use_perf = 1 ]; then
    perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -o "$out/$name.perf" -- "$@" >/dev/null
    perf script -i "$out/$name.perf" 2>/dev/null | "$tools/bin/inferno-collapse-perf" > "$out/$name.folded"
    "$tools/bin/inferno-flamegraph" --title "vorpalfs $name" < "$out/$name.folded" > "$out/$name.svg"
    echo "$out/$name.svg"
  else
    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out/$name.callgrind" "$@" >/dev/null
    callgrind_annotate "$out/$name.callgrind" 2>/dev/null | head -40 >&2
    echo "$out/$name.callgrind"
  fi
}

# profile_daemon NAME CMD...: profiles the running daemon while CMD runs.
profile_daemon() {
  local name=$1; shift
  local pid
  pid=$(VORPALFS_STORE_DIR="$work/store" "$bin" --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
  if [ $use_perf = 1 ]; then
    perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$pid" -o "$out/$name.perf" &
    local rec=$!
    sleep 0.5
    "$@" >/dev/null
    kill -INT $rec; wait $rec || true
    perf script -i "$out/$name.perf" 2>/dev/null | "$tools/bin/inferno-collapse-perf" > "$out/$name.folded"
    "$tools/bin/inferno-flamegraph" --title "vorpalfs $name (daemon)" < "$out/$name.folded" > "$out/$name.svg"
    echo "$out/$name.svg"
  else
    echo "perf is not available here: profiling the daemon needs it (use -- CMD with callgrind instead)" >&2
    exit 1
  fi
}

export VORPALFS_STORE_DIR="$work/store" VORPALFS_MOUNTPOINT="$work/mnt"
case "$what" in
  ingest)
    tree="${1:-$(rustc --print sysroot)}"
    tar -cf - -C "$tree" . | cat >/dev/null
    profile ingest "$bin" store add "$tree"
    ;;
  read)
    tree="${1:-$(rustc --print sysroot)}"
    digest=$("$bin" store add "$tree" 2>/dev/null)
    "$bin" mount >/dev/null
    sync; echo 3 > /proc/sys/vm/drop_caches
    profile_daemon read sh -c "cd '$work/mnt/$digest' && find . -type f -print0 | xargs -0 -n 256 cat >/dev/null"
    ;;
  build)
    dir="${1:-examples/multi}"
    "$bin" build "$dir" >/dev/null 2>&1
    profile_daemon build "$bin" build --rebuild "$dir"
    ;;
  --)
    profile "$(basename "$1")" "$@"
    ;;
  *)
    sed -n '2,17p' "$0"; exit 2
    ;;
esac
