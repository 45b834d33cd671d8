#!/usr/bin/env bash
# The performance gate: instruction counts of the hot paths (benches/gate.rs, run under
# callgrind through gungraun) against the baselines in benches/gate-baseline.json. Exits 1,
# naming the bench, its baseline and its new count, when one is more than the threshold (3% by
# default, PERF_GATE_THRESHOLD=N) above its baseline, or missing. Instruction counts do not
# depend on the machine's load, so the gate holds on a noisy shared machine; they do depend on
# the CPU class, the compiler and the libraries, so baselines are per machine kind.
#
#   scripts/perf-gate.sh            check (scripts/test.sh runs this)
#   scripts/perf-gate.sh --update   write the current counts as the new baselines: commit them
#                                   on their own, with the reason in the commit message
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vorpalfs-target}"
tools="${VORPALFS_TOOLS:-/var/tmp/vorpalfs-tools}"
threshold="${PERF_GATE_THRESHOLD:-3}"
baseline=benches/gate-baseline.json

command -v valgrind >/dev/null || { echo "perf-gate: valgrind is missing (scripts/setup.sh installs it)" >&2; exit 1; }
# The runner must be the library's exact version (from Cargo.lock).
cargo metadata --format-version 1 >/dev/null
version=$(cargo pkgid -p gungraun | sed "s/.*[@#]//")
runner="$tools/gungraun-$version/bin/gungraun-runner"
if [ ! -x "$runner" ]; then
  echo "perf-gate: installing gungraun-runner $version into $tools (once per machine)" >&2
  CARGO_TARGET_DIR="$tools/target" cargo install gungraun-runner --version "$version" --locked \
    --root "$tools/gungraun-$version" >&2
fi
# Read when the bench is compiled (cargo rebuilds it when this changes).
export GUNGRAUN_RUNNER="$runner"

out=$(mktemp)
trap 'rm -f "$out"' EXIT
# --workspace, not -p: the same features as the rest of the build, so nothing is rebuilt.
cargo bench -q --workspace --bench gate -- --output-format=json --callgrind-args=--cache-sim=no > "$out"

python3 - "$out" "$baseline" "$threshold" "${1:-}" <<'PY'
import json, sys
out, baseline_path, threshold, mode = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
counts = {}
for line in open(out):
    line = line.strip()
    if not line.startswith("{"):
        continue
    s = json.loads(line)
    name = s["module_path"] + ("::" + s["id"] if s.get("id") else "")
    ir = [p["data"]["total"]["metrics"]["Ir"]["values"]["new"] for p in s["profiles"] if p["tool"] == "Callgrind"]
    counts[name] = ir[0] if ir else 0
if not counts:
    sys.exit("perf-gate: the benches printed no results")
zero = [n for n, ir in counts.items() if not ir]
if zero:
    sys.exit(f"perf-gate: no instructions counted for {', '.join(zero)} (a stripped build?)")
if mode == "--update":
    json.dump({"threshold_percent": threshold, "benches": dict(sorted(counts.items()))}, open(baseline_path, "w"), indent=2)
    open(baseline_path, "a").write("\n")
    print(f"perf-gate: wrote {len(counts)} baselines to {baseline_path}; commit them with the reason")
    sys.exit(0)
try:
    base = json.load(open(baseline_path))["benches"]
except FileNotFoundError:
    sys.exit(f"perf-gate: {baseline_path} is missing: run scripts/perf-gate.sh --update and commit it")
failed = []
print(f"{'bench':<52} {'baseline':>13} {'now':>13} {'change':>8}")
for name in sorted(set(base) | set(counts)):
    b, n = base.get(name), counts.get(name)
    if b is None:
        failed.append(f"{name}: {n} instructions, no baseline (run --update and commit it)")
        continue
    if n is None:
        failed.append(f"{name}: in the baseline ({b}) but not run")
        continue
    change = (n - b) / b * 100
    flag = "  REGRESSION" if change > threshold else ("  faster: update the baseline" if change < -threshold else "")
    print(f"{name:<52} {b:>13,} {n:>13,} {change:>+7.2f}%{flag}")
    if change > threshold:
        failed.append(f"{name}: {n:,} instructions against a baseline of {b:,} ({change:+.2f}%, threshold {threshold:g}%)")
if failed:
    print("perf-gate: FAILED", *failed, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"perf-gate: {len(counts)} benches within {threshold:g}% of their baselines")
PY
