#!/usr/bin/env bash
# Writes the man pages (vorpalfs.1 and vorpalfs-<command>.1) into OUTDIR, from the built binary
# (VORPALFS_BIN, else target/release/vorpalfs, else vorpalfs on PATH).
set -euo pipefail
out=${1:?usage: scripts/man.sh OUTDIR}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${VORPALFS_BIN:-}
if [ -z "$bin" ]; then
  for b in "${CARGO_TARGET_DIR:-$root/target}/release/vorpalfs" "$(command -v vorpalfs || true)"; do
    if [ -n "$b" ] && [ -x "$b" ]; then bin=$b; break; fi
  done
fi
[ -n "$bin" ] || { echo "no vorpalfs binary: build it first (cargo build --release)" >&2; exit 1; }
"$bin" manpages "$out"
ls "$out"/vorpalfs*.1
