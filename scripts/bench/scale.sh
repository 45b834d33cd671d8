#!/usr/bin/env bash
# Scale: trees of N small files (1,000 to a directory, each file's content unique), each ingested
# into an empty store with its peak memory, verified, and read cold through the mount (30,000
# files); then the smallest tree added into the store of the largest. Prints the figures and the
# per-file ratios between sizes (what must stay flat as the file count grows).
#
#   scripts/bench/scale.sh [N...]     (default: 300000 1000000; trees are kept under BENCH_DIR)
# Needs root (drop_caches, mounts).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/record.sh
sizes=("${@:-300000 1000000}")
read -r -a sizes <<< "${sizes[*]}"
work="${BENCH_DIR:-/var/tmp/vorpalfs-bench-scale}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vorpalfs-target}"
cargo build --release -p vorpalfs >&2
bin="$CARGO_TARGET_DIR/release/vorpalfs"
mkdir -p "$work"
umount_all() { for n in "${sizes[@]}"; do "$bin" --store-dir "$work/store-$n" umount "$work/mnt" >/dev/null 2>&1 || true; done; }
trap umount_all EXIT

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

declare -A add rss verify cat
for n in "${sizes[@]}"; do
  src="$work/src-$n"
  if [ ! -f "$src/.complete" ]; then
    rm -rf "$src"
    python3 - "$src" "$n" <<'PY'
import os, sys
top, n = sys.argv[1], int(sys.argv[2])
for d in range((n + 999) // 1000):
    path = os.path.join(top, f"d{d:05}")
    os.makedirs(path)
    for f in range(min(1000, n - d * 1000)):
        with open(os.path.join(path, f"f{f:04}"), "w") as out:
            out.write(f"file {d}/{f} of a tree of {n}\n")
PY
    touch "$src/.complete"
  fi
  store="$work/store-$n"
  rm -rf "$store"
  drop
  t=$(now)
  out=$(/usr/bin/time -f '%M' "$bin" --store-dir "$store" store add "$src" 2>"$work/time-$n" >"$work/root-$n"; tail -1 "$work/time-$n")
  add[$n]=$(since "$t"); rss[$n]=$((out / 1024))
  drop
  t=$(now); "$bin" --store-dir "$store" store verify >/dev/null 2>&1; verify[$n]=$(since "$t")
  "$bin" --store-dir "$store" mount "$work/mnt" >/dev/null
  root="$work/mnt/$(cat "$work/root-$n")"
  drop
  t=$(now); (cd "$root" && find d0000[0-9] d0001[0-9] d0002[0-9] -type f -print0 | xargs -0 cat > /dev/null); cat[$n]=$(since "$t")
  "$bin" --store-dir "$store" umount "$work/mnt" >/dev/null
  echo "  $n files: add ${add[$n]} s (peak ${rss[$n]} MiB), verify ${verify[$n]} s, cold cat of 30k ${cat[$n]} s" >&2
  record scale "add_$n" "${add[$n]}" s
  record scale "add_peak_rss_$n" "${rss[$n]}" MiB
  record scale "verify_$n" "${verify[$n]}" s
  record scale "cold_cat_30k_$n" "${cat[$n]}" s
done

small=${sizes[0]}; large=${sizes[-1]}
if [ "$small" != "$large" ]; then
  drop
  t=$(now); "$bin" --store-dir "$work/store-$large" store add "$work/src-$small" --name again >/dev/null 2>&1
  into=$(since "$t")
  r_add=$(awk -v a="$into" -v b="${add[$small]}" 'BEGIN { printf "%.2f", a / b }')
  r_verify=$(awk -v a="${verify[$large]}" -v b="${verify[$small]}" -v n="$large" -v m="$small" 'BEGIN { printf "%.2f", (a / n) / (b / m) }')
  echo "$small files into the $large-file store: $into s, ${r_add}x the time into an empty store" >&2
  echo "verify per file, $large vs $small files: ${r_verify}x" >&2
  record scale "add_${small}_into_${large}" "$into" s "$r_add"
  record scale "verify_per_file_${large}_vs_${small}" "$r_verify" x
fi
