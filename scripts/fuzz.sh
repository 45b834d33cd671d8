#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a while with cargo-fuzz on the nightly
# toolchain: the decoders of what comes from disk, S3 and the daemon socket, and the manifest
# parser. Starts from the seed corpus in fuzz/corpus (left unchanged: what libFuzzer finds goes
# to a scratch corpus) and stops at the first crash, which libFuzzer writes to
# fuzz/artifacts/<target>/ with the command that replays it.
#
#   scripts/fuzz.sh [SECONDS per target, default 60] [TARGET...]
#
# The stable test suite runs the same target bodies on random and changed inputs
# (store/tests/decoders.rs, the protocol and manifest tests); this runs them far longer.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
scratch="${VORPALFS_FUZZ_CORPUS:-/var/tmp/vorpalfs-fuzz-corpus}"
target="${CARGO_TARGET_DIR:-/var/tmp/vorpalfs-target}"
export CARGO_TARGET_DIR="$target/fuzz"
# RocksDB's C++ is not what is fuzzed, and compiling it again for the nightly build takes most
# of an hour on two cores: link the static library the stable release build already made, when
# there is one (ROCKSDB_LIB_DIR set by the caller wins).
if [ -z "${ROCKSDB_LIB_DIR:-}" ]; then
  lib=$(ls -S "$target"/release/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -1 || true)
  if [ -n "$lib" ] && [ "$(stat -c %s "$lib")" -gt 1000000 ]; then
    mkdir -p "$CARGO_TARGET_DIR/rocksdb-lib"
    cp -u "$lib" "$CARGO_TARGET_DIR/rocksdb-lib/librocksdb.a"
    export ROCKSDB_LIB_DIR="$CARGO_TARGET_DIR/rocksdb-lib" ROCKSDB_STATIC=1
  fi
fi
cargo +nightly fuzz build
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "==> fuzz $t for ${seconds}s" >&2
  cargo +nightly fuzz run "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1
done
