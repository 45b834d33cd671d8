# Sourced by the benchmark scripts: `record BENCH METRIC VALUE UNIT [RATIO]` appends one JSON
# line to $BENCH_RESULTS (default benches/results/<bench>.jsonl in the checkout): the run (its
# UTC start), the figure, its ratio to the peer it is compared with (peer time / vorpalfs time,
# or the bar's own ratio; empty when there is none), the commit and the machine.
# scripts/bench/compare.py compares a run with the previous one.
_bench_root="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel 2>/dev/null || pwd)"
BENCH_RUN="${BENCH_RUN:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}"
_bench_commit="$(git -C "$_bench_root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$_bench_root" diff --quiet HEAD 2>/dev/null || _bench_commit="$_bench_commit+dirty"
_bench_machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
record() {
  local bench=$1 metric=$2 value=$3 unit=$4 ratio=${5:-}
  local file="${BENCH_RESULTS:-$_bench_root/benches/results/$bench.jsonl}"
  mkdir -p "$(dirname "$file")"
  printf '{"run":"%s","bench":"%s","metric":"%s","value":%s,"unit":"%s","ratio":%s,"commit":"%s","machine":"%s"}\n' \
    "$BENCH_RUN" "$bench" "$metric" "$value" "$unit" "${ratio:-null}" "$_bench_commit" "$_bench_machine" >> "$file"
}
