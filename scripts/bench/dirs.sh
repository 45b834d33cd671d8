#!/usr/bin/env bash
# Huge directories: one directory of N entries (default 100,000 empty files) listed through the
# mount and natively from disk, side by side in one run:
#   cold listing (caches dropped, mount fresh) with 4 KiB getdents buffers (ls -f) and with
#   64-byte ones (one entry of these names per call: every call resumes at an offset);
#   warm listing (the kernel's cached directory);
#   cold `ls -l` (readdirplus and a stat of every entry), also with the mount's extended
#   attributes on (`--xattrs`: the kernel then sends ls's two xattr probes of every entry).
#
#   scripts/bench/dirs.sh [N]
# Needs root (drop_caches, mounts). Prints seconds and the ratio vorpalfs / native (lower is
# better; 1.0 is native speed), and records them (scripts/bench/record.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/record.sh

n="${1:-100000}"
work="${BENCH_DIR:-/var/tmp/vorpalfs-bench-dirs}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vorpalfs-target}"
cargo build --release -p vorpalfs -p vorpalfs-tests --bins >&2
bin="$CARGO_TARGET_DIR/release/vorpalfs"
list="$CARGO_TARGET_DIR/release/vorpalfs-list-dir"

umount_v() { "$bin" --store-dir "$work/vstore" umount "$work/vmnt" >/dev/null 2>&1 || true; }
trap umount_v EXIT
umount_v
rm -rf "$work" && mkdir -p "$work/src/big" "$work/vmnt"
(cd "$work/src/big" && seq -f 'entry-%08g' 1 "$n" | xargs touch)
digest=$("$bin" --store-dir "$work/vstore" store add "$work/src" 2>/dev/null)

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
timed() { local t; t=$(now); "$@" >/dev/null; awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
mount_v() { "$bin" --store-dir "$work/vstore" mount "$work/vmnt" >/dev/null; }

declare -A fig
measure() { # name dir fresh-fn
  local name=$1 dir=$2 fresh=$3
  $fresh; drop; fig[$name.cold_4k]=$(timed "$list" "$dir" 4096)
  fig[$name.warm_4k]=$(timed "$list" "$dir" 4096)
  $fresh; drop; fig[$name.cold_64b]=$(timed "$list" "$dir" 64)
  $fresh; drop; fig[$name.cold_ls_l]=$(timed ls -l "$dir")
}
native_fresh() { :; }
vorpal_fresh() { umount_v; mount_v; }
measure native "$work/src/big" native_fresh
measure vorpalfs "$work/vmnt/$digest/big" vorpal_fresh
umount_v; "$bin" --store-dir "$work/vstore" --xattrs mount "$work/vmnt" >/dev/null; drop
fig[vorpalfs.cold_ls_l_xattrs]=$(timed ls -l "$work/vmnt/$digest/big")
fig[native.cold_ls_l_xattrs]=${fig[native.cold_ls_l]}
[ "$("$list" "$work/vmnt/$digest/big" 64)" = "$((n + 2))" ] || { echo "dirs: wrong entry count" >&2; exit 1; }

printf '%-14s %10s %10s %10s\n' "$n entries" native vorpalfs "x native"
for f in cold_4k warm_4k cold_64b cold_ls_l cold_ls_l_xattrs; do
  r=$(awk -v a="${fig[vorpalfs.$f]}" -v b="${fig[native.$f]}" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
  printf '%-14s %10s %10s %10s\n' "$f" "${fig[native.$f]}" "${fig[vorpalfs.$f]}" "$r"
  [ "$f" = cold_ls_l_xattrs ] || record dirs "native_$f" "${fig[native.$f]}" s
  # Recorded as the other benches do: peer time / vorpalfs time.
  record dirs "vorpalfs_$f" "${fig[vorpalfs.$f]}" s \
    "$(awk -v a="${fig[vorpalfs.$f]}" -v b="${fig[native.$f]}" 'BEGIN { printf "%.3f", (a > 0 ? b / a : 0) }')"
done
