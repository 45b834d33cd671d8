#!/usr/bin/env python3
"""Compares the last recorded run of each benchmark with the one before it and prints what
moved beyond noise. Ratios (vorpalfs against its peer, measured in the same run) are compared
where a figure has one: they hold when the machine's speed drifts between runs, absolute times
do not. Figures without a ratio (peak RSS, bytes) are compared as values.

    scripts/bench/compare.py [--noise 0.15] [--fail] [RESULTS.jsonl ...]

Default: every file in benches/results/. With --fail, exits 1 when something got worse.
"""
import argparse
import glob
import json
import os
import sys

# Figures where a larger value is better (throughput, speed-up ratios).
HIGHER_IS_BETTER = ("ratio", "mb_per_s", "speedup", "faster")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*")
    ap.add_argument("--noise", type=float, default=0.15, help="relative change ignored as noise")
    ap.add_argument("--fail", action="store_true", help="exit 1 when a figure got worse")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    files = args.files or sorted(glob.glob(os.path.join(root, "benches", "results", "*.jsonl")))
    worse = 0
    for path in files:
        rows = [json.loads(l) for l in open(path) if l.strip()]
        runs = sorted({r["run"] for r in rows})
        if len(runs) < 2:
            print(f"{os.path.basename(path)}: {len(runs)} run(s) recorded, nothing to compare")
            continue
        prev, last = runs[-2], runs[-1]
        by = lambda run: {r["metric"]: r for r in rows if r["run"] == run}
        a, b = by(prev), by(last)
        print(f"{os.path.basename(path)}: {last} ({b[next(iter(b))]['commit']}) against {prev} ({a[next(iter(a))]['commit']})")
        for metric in sorted(set(a) & set(b)):
            ra, rb = a[metric], b[metric]
            key = "ratio" if ra.get("ratio") is not None and rb.get("ratio") is not None else "value"
            old, new = ra[key], rb[key]
            if not old:
                continue
            change = (new - old) / abs(old)
            higher_better = key == "ratio" or any(h in metric for h in HIGHER_IS_BETTER)
            got_worse = change < 0 if higher_better else change > 0
            mark = "  "
            if abs(change) > args.noise:
                mark = "- " if got_worse else "+ "
                worse += got_worse
            unit = "" if key == "ratio" else " " + rb["unit"]
            print(f"  {mark}{metric:<40} {key} {old:g} -> {new:g}{unit} ({change:+.0%})")
    if worse:
        print(f"{worse} figure(s) moved the wrong way beyond {args.noise:.0%}")
    sys.exit(1 if (worse and args.fail) else 0)


if __name__ == "__main__":
    main()
