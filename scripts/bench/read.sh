#!/usr/bin/env bash
# Read benchmark: the same real tree read through vorpalfs, natively from disk, through
# squashfuse (a squashfs image) and through `casync mount` (a casync index), side by side in one
# run:
#   (a) first sequential read of every file, page cache dropped
#   (b) re-read with the page cache warm
#   (c) metadata walk (find + lstat of every entry), first (caches dropped) and second
#   (d) time to first byte of one file: mount, then read one byte, from cold
#
#   scripts/bench/read.sh [TREE]         (default: the active Rust toolchain, ~1.4 GB, 52k files)
#   SKIP_CASYNC=1 scripts/bench/read.sh  (casync mount takes minutes per read of a large tree)
#   SKIP_SQUASHFUSE=1 ...                  (likewise, to measure vorpalfs against native only)
# Needs root (drop_caches, mounts). Prints a table and ratios against native.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/record.sh

tree="$(realpath "${1:-$(rustc --print sysroot)}")"
work="${BENCH_DIR:-/var/tmp/vorpalfs-bench-read}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vorpalfs-target}"
command -v squashfuse >/dev/null && command -v mksquashfs >/dev/null && command -v casync >/dev/null \
  || apt-get install -y -qq squashfuse squashfs-tools casync fuse3 >/dev/null
cargo build --release --workspace >&2
bin="$CARGO_TARGET_DIR/release/vorpalfs"

cleanup() {
  "$bin" --store-dir "$work/vstore" umount "$work/vmnt" >/dev/null 2>&1 || true
  for m in "$work/sqmnt" "$work/camnt"; do umount -l "$m" 2>/dev/null || true; done
  [ -n "${casync_pid:-}" ] && kill "$casync_pid" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
rm -rf "$work" && mkdir -p "$work"/{vmnt,sqmnt,camnt}

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
readall() { (cd "$1" && find . -type f -print0 | xargs -0 -n 256 -P 1 cat >/dev/null); }
walk() { find "$1" -printf '%s %m %y\n' >/dev/null; }

bytes=$(du -sb --apparent-size "$tree" | cut -f1)
echo "tree: $tree ($bytes bytes, $(find "$tree" -type f | wc -l) files)" >&2
probe=$(cd "$tree" && find . -type f -size +1M -print -quit)   # the file for time-to-first-byte

echo "preparing: vorpalfs store add, mksquashfs, casync make" >&2
digest=$("$bin" --store-dir "$work/vstore" store add "$tree" 2>/dev/null)
[ -n "${SKIP_SQUASHFUSE:-}" ] || mksquashfs "$tree" "$work/tree.sqfs" -comp zstd -quiet -no-progress >/dev/null
[ -n "${SKIP_CASYNC:-}" ] || casync make --store="$work/castr" "$work/tree.caidx" "$tree" >/dev/null

mount_v() { "$bin" --store-dir "$work/vstore" mount "$work/vmnt" >/dev/null; }
umount_v() { "$bin" --store-dir "$work/vstore" umount "$work/vmnt" 2>/dev/null; }
mount_sq() { squashfuse "$work/tree.sqfs" "$work/sqmnt"; }
umount_sq() { umount "$work/sqmnt"; }
mount_ca() {
  casync mount --store="$work/castr" "$work/tree.caidx" "$work/camnt" & casync_pid=$!
  until mountpoint -q "$work/camnt"; do sleep 0.05; done
}
umount_ca() { umount "$work/camnt"; wait "$casync_pid" 2>/dev/null || true; casync_pid=; }

declare -A first reread walk1 walk2 ttfb
measure() { # name root-dir mount-fn umount-fn
  local name=$1 root=$2 mnt=$3 umnt=$4 t
  drop; t=$(now); $mnt; head -c1 "$root/$probe" >/dev/null; ttfb[$name]=$(elapsed "$t")
  $umnt; $mnt
  drop; t=$(now); walk "$root"; walk1[$name]=$(elapsed "$t")
  t=$(now); walk "$root"; walk2[$name]=$(elapsed "$t")
  $umnt; $mnt
  drop; t=$(now); readall "$root"; first[$name]=$(elapsed "$t")
  t=$(now); readall "$root"; reread[$name]=$(elapsed "$t")
  $umnt
  echo "  $name: first read ${first[$name]}s, re-read ${reread[$name]}s, walk ${walk1[$name]}s/${walk2[$name]}s, first byte ${ttfb[$name]}s" >&2
}

names=(native vorpalfs)
measure native "$tree" true true
measure vorpalfs "$work/vmnt/$digest" mount_v umount_v
if [ -z "${SKIP_SQUASHFUSE:-}" ]; then
  names+=(squashfuse)
  measure squashfuse "$work/sqmnt" mount_sq umount_sq
fi
if [ -z "${SKIP_CASYNC:-}" ]; then
  names+=(casync)
  measure casync "$work/camnt" mount_ca umount_ca
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }'; }
printf '\n%-12s %12s %12s %12s %12s %12s\n' "" "first read" "re-read" "first walk" "second walk" "first byte"
for n in "${names[@]}"; do
  printf '%-12s %11ss %11ss %11ss %11ss %11ss\n' "$n" "${first[$n]}" "${reread[$n]}" "${walk1[$n]}" "${walk2[$n]}" "${ttfb[$n]}"
done
printf '\nthroughput relative to native (higher is better; native = 1.00):\n'
for n in "${names[@]}"; do
  printf '%-12s first read %sx, re-read %sx, first walk %sx, second walk %sx\n' "$n" \
    "$(ratio "${first[$n]}" "${first[native]}")" "$(ratio "${reread[$n]}" "${reread[native]}")" \
    "$(ratio "${walk1[$n]}" "${walk1[native]}")" "$(ratio "${walk2[$n]}" "${walk2[native]}")"
done
for f in first reread walk1 walk2 ttfb; do
  declare -n fig=$f
  # The ratio is native's time over vorpalfs's: 1.00 is as fast as the local disk.
  record read "vorpalfs_$f" "${fig[vorpalfs]}" s "$(ratio "${fig[vorpalfs]}" "${fig[native]}")"
done
[ -n "${walk1[squashfuse]:-}" ] && printf 'vorpalfs first walk vs squashfuse: %sx faster\n' "$(ratio "${walk1[vorpalfs]}" "${walk1[squashfuse]}")"
true
