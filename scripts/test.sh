#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, the whole test suite (unit, property and
# end-to-end tests against the real binary, real RocksDB and real mounts), a compile of the
# benchmarks, and the performance gate (instruction counts against their baselines). Installs
# what is missing first. Exits non-zero on any failure.
#
# Needs root (the tests mount tmpfs and bind mounts, make device nodes and drop to `nobody`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

# The S3-compatible server the S3 tests start on 127.0.0.1 (one per test, on a free port).
venv="${VORPALFS_VENV:-/var/tmp/vorpalfs-venv}"
if [ ! -x "$venv/bin/moto_server" ]; then
  echo "test.sh: installing moto_server into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'moto[server]'
fi
export VORPALFS_MOTO="$venv/bin/moto_server"

step() { printf '\n==> %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

# Everything is built in the release profile: RocksDB takes ~15 minutes to compile on two
# cores, and one profile means it is compiled once for the binary, the tests and the benches.
step "cargo build --release"
cargo build --release --workspace --all-targets

step "cargo clippy -D warnings"
cargo clippy --release --workspace --all-targets -- -D warnings

step "cargo test --release"
cargo test --release --workspace

step "cargo bench --no-run"
cargo bench --workspace --no-run

# Instruction counts of the hot paths against benches/gate-baseline.json (fails past 3%).
step "performance gate"
scripts/perf-gate.sh

echo "test.sh: all checks passed" >&2
