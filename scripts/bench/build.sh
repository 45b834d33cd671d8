#!/usr/bin/env bash
# Whole-system benchmark of `vorpalfs build` (see the builder issue for the bars):
#
#  1. a generated DAG of 100 sleep-and-write artifacts with a known critical path, built at
#     -j <CPUs> and at -j 1: wall / critical path (bar: <= 1.1 with enough width);
#  2. per-artifact overhead: 100 independent `true` artifacts at -j 1, from the build's own
#     timings (sandbox setup + step + publish; bar: under 20 ms);
#  3. a fully cached rebuild of 1,000 artifacts (bar: under 2 s).
#
# Runs against a scratch store and mountpoint under /var/tmp (needs root, like the tests).
# Usage: scripts/bench/build.sh   (VORPALFS=path/to/vorpalfs to pick the binary)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/record.sh
target="${CARGO_TARGET_DIR:-target}"
B="${VORPALFS:-$target/release/vorpalfs}"
[ -n "${VORPALFS:-}" ] || cargo build --release --workspace >&2
B="$(realpath "$B")"

work="$(mktemp -d /var/tmp/vorpalfs-bench-build.XXXXXX)"
export VORPALFS_STORE_DIR="$work/store" VORPALFS_MOUNTPOINT="$work/mnt"
cleanup() { "$B" umount >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
cpus="$(nproc)"
nonce="$(date +%s%N)"   # every run builds from scratch

python3 - "$work" "$nonce" <<'PY'
import random, sys, os
work, nonce = sys.argv[1], sys.argv[2]
rng = random.Random(42)

def art(name, deps, script, run):
    d = ", ".join(f'"{x}"' for x in deps)
    return (f'[[artifact]]\nname = "{name}"\ndeps = [{d}]\n[[artifact.step]]\n'
            f'env = {{ RUN = "{run}" }}\nscript = "{script}"\n\n')

# 1. 50 layers of 2; each artifact needs both of the layer before it.
for run in ("jN", "j1"):
    os.makedirs(f"{work}/dag-{run}", exist_ok=True)
    rng = random.Random(42)
    text, cp, total = "", 0.0, 0.0
    prev = []
    for layer in range(50):
        cur, worst = [], 0.0
        for k in range(2):
            s = round(rng.uniform(0.05, 0.25), 3)
            name = f"a{layer}-{k}"
            text += art(name, prev, f"sleep {s}; echo {name} > $VORPAL_OUTPUT/out", f"{nonce}-{run}")
            cur.append(name); worst = max(worst, s); total += s
        prev = cur; cp += worst
    open(f"{work}/dag-{run}/vorpalfs.toml", "w").write(text)
    open(f"{work}/dag-{run}/critical", "w").write(f"{cp:.3f} {total:.3f}\n")

# 2. 100 independent trivial artifacts.
os.makedirs(f"{work}/trivial", exist_ok=True)
open(f"{work}/trivial/vorpalfs.toml", "w").write(
    "".join(art(f"t{i}", [], "true", nonce) for i in range(100)))

# 3. 1,000 artifacts in 10 chains of 100.
os.makedirs(f"{work}/thousand", exist_ok=True)
text = ""
for c in range(10):
    for i in range(100):
        text += art(f"c{c}-{i}", [f"c{c}-{i-1}"] if i else [], "echo x > $VORPAL_OUTPUT/x", nonce)
open(f"{work}/thousand/vorpalfs.toml", "w").write(text)
PY

now() { date +%s.%N; }
"$B" mount >/dev/null  # the daemon, started outside the timings

read -r cp total < "$work/dag-jN/critical"
t0=$(now); "$B" build -j "$cpus" "$work/dag-jN" >/dev/null 2>"$work/jN.log"; t1=$(now)
t2=$(now); "$B" build -j 1 "$work/dag-j1" >/dev/null 2>"$work/j1.log"; t3=$(now)

"$B" --json build -j 1 "$work/trivial" > "$work/trivial.json" 2>/dev/null

"$B" build -j "$cpus" "$work/thousand" >/dev/null 2>&1
t4=$(now); "$B" build "$work/thousand" >/dev/null 2>"$work/cached.log"; t5=$(now)
grep -q "0 to build, 1000 cached" "$work/cached.log" || { echo "cached rebuild was not fully cached:"; cat "$work/cached.log"; exit 1; }

python3 - "$cp" "$total" "$t0" "$t1" "$t2" "$t3" "$t4" "$t5" "$work/trivial.json" "$cpus" "$work/figures" <<'PY'
import json, sys
cp, total, t0, t1, t2, t3, t4, t5 = map(float, sys.argv[1:9])
rep = json.load(open(sys.argv[9]))
cpus = sys.argv[10]
per = sorted(a["finished"] - a["started"] for a in rep["artifacts"])
mean = sum(per) / len(per)
print(f"DAG of 100 sleep steps, 50 layers x 2: critical path {cp:.2f} s, sum of steps {total:.2f} s")
print(f"  -j {cpus}: wall {t1-t0:6.2f} s   wall / critical path = {(t1-t0)/cp:.3f}   (bar <= 1.1)")
print(f"  -j 1: wall {t3-t2:6.2f} s   wall / sum of steps   = {(t3-t2)/total:.3f}")
print(f"per-artifact overhead (100 x `true`, -j 1): mean {mean*1000:.1f} ms, median {per[len(per)//2]*1000:.1f} ms, "
      f"p90 {per[int(len(per)*0.9)]*1000:.1f} ms   (bar < 20 ms; sandbox + step + publish)")
print(f"fully cached rebuild of 1,000 artifacts: {t5-t4:.2f} s   (bar < 2 s)")
with open(sys.argv[11], "w") as f:
    f.write(f"dag_wall_over_critical_path {(t1-t0)/cp:.3f} x\n")
    f.write(f"serial_wall_over_sum_of_steps {(t3-t2)/total:.3f} x\n")
    f.write(f"overhead_per_artifact_mean {mean*1000:.1f} ms\n")
    f.write(f"overhead_per_artifact_p90 {per[int(len(per)*0.9)]*1000:.1f} ms\n")
    f.write(f"cached_rebuild_1000 {t5-t4:.3f} s\n")
PY
while read -r metric value unit; do record build "$metric" "$value" "$unit"; done < "$work/figures"
