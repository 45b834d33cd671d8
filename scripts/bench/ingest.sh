#!/usr/bin/env bash
# Ingest benchmark: `vorpalfs store add` against the pipeline Vorpal uses (per-file SHA-256 in
# one thread, then tar | zstd at the default level) and against `casync make`, on one real tree,
# in one run. Reports wall time, throughput, peak RSS and stored bytes, and ratios.
#
#   scripts/bench/ingest.sh [TREE]      (default: the active Rust toolchain, ~1.4 GB)
#   BIG_FILE_GIB=4 scripts/bench/ingest.sh   also measures peak RSS ingesting one 4 GiB file
#
# All tools read the tree with a warm page cache (it is read once first), and each tool runs
# once to warm up before the measured run (see measure), so the comparison is
# of the pipelines, not of the disk.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/record.sh

tree="${1:-$(rustc --print sysroot)}"
work="${BENCH_DIR:-/var/tmp/vorpalfs-bench}"
big_gib="${BIG_FILE_GIB:-4}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vorpalfs-target}"

for tool in casync zstd /usr/bin/time; do
  command -v "$tool" >/dev/null || { apt-get install -y -qq casync zstd time >/dev/null; break; }
done
cargo build --release --workspace >&2
bin="$CARGO_TARGET_DIR/release/vorpalfs"

rm -rf "$work" && mkdir -p "$work"
bytes=$(du -sb --apparent-size "$tree" | cut -f1)
files=$(find "$tree" -type f | wc -l)
echo "tree: $tree ($bytes bytes, $files files); cores: $(nproc)" >&2
tar -cf - -C "$tree" . | cat >/dev/null   # warm the page cache (tar skips reading into /dev/null)
sync                                # and write back what the build left dirty

# measure NAME CLEAN CMD...: runs CMD once to warm up, then CLEAN (removes what it wrote), then
# again under /usr/bin/time, recording seconds, peak RSS (KiB) and CPU seconds. The warm-up
# matters on this VM: memory the guest freed a while ago is handed back to the host, and the
# first run to touch it again pays for it (seen as up to 2x system time), whichever tool it is.
declare -A secs rss cpu
measure() {
  local name=$1 clean=$2; shift 2
  "$@" >/dev/null 2>&1; eval "$clean"
  /usr/bin/time -f "%e %M %U %S" -o "$work/time.$name" "$@" >/dev/null 2>&1
  local user sys
  read -r secs[$name] rss[$name] user sys < "$work/time.$name"
  cpu[$name]=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
}

measure vorpalfs 'rm -rf "$work/vstore"' "$bin" --store-dir "$work/vstore" store add "$tree"
stored_v=$(du -sb "$work/vstore/packs" | cut -f1)

vorpal_pipeline() {
  # Vorpal: sequential per-file SHA-256 of the sources, then one tar.zst archive (level 3, one thread).
  (cd "$tree" && find . -type f -print0 | sort -z | xargs -0 sha256sum >/dev/null)
  tar -cf - -C "$tree" . | zstd -3 -q -f -o "$work/archive.tar.zst"
}
export -f vorpal_pipeline; export tree work
measure vorpal 'rm -f "$work/archive.tar.zst"' bash -c vorpal_pipeline
stored_p=$(stat -c %s "$work/archive.tar.zst")

measure casync 'rm -rf "$work/castr" "$work/index.caidx"' casync make --store="$work/castr" "$work/index.caidx" "$tree"
stored_c=$(du -sb "$work/castr" | cut -f1)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
mbs() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.0f", (s > 0 ? b / s / 1e6 : 0) }'; }

printf '\n%-24s %8s %6s %8s %12s %12s %17s\n' tool seconds MB/s "CPU s" "peak RSS MiB" "stored bytes" "time vs vorpalfs"
for t in vorpalfs vorpal casync; do
  case $t in vorpalfs) st=$stored_v;; vorpal) st=$stored_p;; casync) st=$stored_c;; esac
  label=$t; [ "$t" = vorpal ] && label="vorpal (sha256+tar+zstd)"; [ "$t" = casync ] && label="casync make"
  printf '%-24s %8s %6s %8s %12s %12s %16sx\n' "$label" "${secs[$t]}" "$(mbs "${secs[$t]}")" "${cpu[$t]}" "$((rss[$t] / 1024))" "$st" "$(ratio "${secs[$t]}" "${secs[vorpalfs]}")"
done

record ingest vorpalfs_seconds "${secs[vorpalfs]}" s
record ingest vs_vorpal_pipeline "${secs[vorpalfs]}" s "$(ratio "${secs[vorpal]}" "${secs[vorpalfs]}")"
record ingest vs_casync_make "${secs[vorpalfs]}" s "$(ratio "${secs[casync]}" "${secs[vorpalfs]}")"
record ingest vorpalfs_cpu_seconds "${cpu[vorpalfs]}" s
record ingest vorpalfs_peak_rss "$((rss[vorpalfs] / 1024))" MiB
record ingest vorpalfs_stored_bytes "$stored_v" bytes

if [ "$big_gib" != 0 ]; then
  mkdir -p "$work/big"
  head -c "$((big_gib << 30))" /dev/urandom > "$work/big/file.bin"
  measure big 'rm -rf "$work/bstore"' "$bin" --store-dir "$work/bstore" store add "$work/big"
  printf '\none %s GiB file: %s s, peak RSS %s MiB\n' "$big_gib" "${secs[big]}" "$((rss[big] / 1024))"
  record ingest big_file_seconds "${secs[big]}" s
  record ingest big_file_peak_rss "$((rss[big] / 1024))" MiB
fi
rm -rf "$work"
