#!/usr/bin/env bash
# Load test: one daemon serving a real tree (default: the Rust toolchain) while, for a bounded
# time, READERS threads read 128 KiB at random offsets of random files (small and large, first
# reads from the packs, later ones from memory), STATS threads lstat random paths, the kernel's
# caches are dropped every few seconds so requests keep reaching the daemon, and BUILDS loops
# rebuild a small manifest. Reports throughput, p50/p95/p99/max latencies of reads and stats,
# and the daemon's RSS and open fds over time (a growing RSS is a leak). Targets (README):
# p99 of a 128 KiB read served from memory under 1 ms; RSS flat after the first minute.
#
#   scripts/bench/load.sh [TREE]      DURATION=600 READERS=8 STATS=2 BUILDS=2 (seconds; needs root)
#                                     SERIES=FILE keeps the per-second RSS/fd series (JSON lines)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/record.sh
tree="$(realpath "${1:-$(rustc --print sysroot)}")"
seconds="${DURATION:-600}"
readers="${READERS:-8}"; stats="${STATS:-2}"; builds="${BUILDS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vorpalfs-target}"
cargo build --release -p vorpalfs -p vorpalfs-benches --bin vorpalfs --bin vorpalfs-load >&2
B="$(realpath "$CARGO_TARGET_DIR/release/vorpalfs")"
L="$(realpath "$CARGO_TARGET_DIR/release/vorpalfs-load")"
work="$(mktemp -d /var/tmp/vorpalfs-bench-load.XXXXXX)"
export VORPALFS_STORE_DIR="$work/store" VORPALFS_MOUNTPOINT="$work/mnt"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; "$B" umount >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

digest=$("$B" store add "$tree" 2>/dev/null)
"$B" mount >/dev/null
pid=$("$B" --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
for b in $(seq "$builds"); do
  mkdir -p "$work/proj$b"
  for i in 1 2 3 4 5; do
    printf '[[artifact]]\nname = "p%s-%s"\n[[artifact.step]]\nscript = "echo %s > $VORPAL_OUTPUT/out"\n\n' "$b" "$i" "$i"
  done > "$work/proj$b/vorpalfs.toml"
  ( n=0; while :; do "$B" build --rebuild -j 1 "$work/proj$b" >/dev/null 2>&1 && n=$((n+1)); echo "$n" > "$work/builds$b"; done ) &
  pids+=($!)
done
# The index's memory (memtables, table readers, block cache) every 30 s, beside the RSS series.
( t=0; while :; do "$B" --json status 2>/dev/null | python3 -c 'import json,sys; m=json.load(sys.stdin)["index_memory"]; print(json.dumps(dict(t='"$t"', **m)))' >> "$work/index.jsonl" || true; sleep 30; t=$((t+30)); done ) &
pids+=($!)
echo "load: $readers readers, $stats stat threads, $builds build loops, $seconds s against $tree" >&2
"$L" --tree "$work/mnt/$digest" --pid "$pid" --readers "$readers" --stats "$stats" --seconds "$seconds" > "$work/load.jsonl"
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
[ -z "${SERIES:-}" ] || cat "$work/load.jsonl" "$work/index.jsonl" > "$SERIES"
python3 - "$work/index.jsonl" >&2 <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in (rows[:1] + rows[len(rows) // 2:len(rows) // 2 + 1] + rows[-1:]) if rows else []:
    print(f"index memory at {r['t']} s: memtables {r['memtables'] >> 20} MiB, table readers "
          f"{r['table_readers'] >> 20} MiB, block cache {r['block_cache'] >> 20} MiB "
          f"({r['block_cache_pinned'] >> 20} MiB pinned)")
PY
built=0; for b in $(seq "$builds"); do built=$((built + $(cat "$work/builds$b" 2>/dev/null || echo 0))); done
echo "builds completed meanwhile: $built (of 5 artifacts each)" >&2
python3 - "$work/load.jsonl" > "$work/figures" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "class" in r:
        for p in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
            print(f"{r['class']}_{p[:-3]} {r[p]} ms")
    if r.get("summary"):
        print(f"reads_per_second {r['reads'] / r['seconds']:.0f} per_s")
        print(f"errors {r['errors']} count")
        print(f"rss_after_first_minute {r['rss_warm_kib'] // 1024} MiB")
        print(f"rss_half_way {r['rss_half_kib'] // 1024} MiB")
        print(f"rss_at_end {r['rss_end_kib'] // 1024} MiB")
        print(f"rss_anon_after_first_minute {r['anon_warm_kib'] // 1024} MiB")
        print(f"rss_anon_half_way {r['anon_half_kib'] // 1024} MiB")
        print(f"rss_anon_at_end {r['anon_end_kib'] // 1024} MiB")
        print(f"fds_max {r['fds_max']} count")
PY
while read -r metric value unit; do record load "$metric" "$value" "$unit"; done < "$work/figures"
record load builds_completed "$built" count
cat "$work/figures"
