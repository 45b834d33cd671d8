#!/usr/bin/env bash
# Installs what building and running vorpalfs needs on a Debian machine. Idempotent: installs
# only what is missing. Run as root (or with sudo available).
set -euo pipefail

packages=(
  build-essential   # cc for the hello example and for crates that build C
  clang libclang-dev pkg-config   # librocksdb-sys builds RocksDB and generates bindings
  fuse3             # fusermount3 and /etc/fuse.conf for the mount
  util-linux        # mount, setpriv, unshare
  busybox-static    # the rootfs of examples/hermetic
  python3-venv      # scripts/test.sh installs the S3 test server (moto) in a venv
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install a Rust toolchain (1.88 or newer) with rustup first" >&2
  exit 1
fi
if [ ! -e /dev/fuse ]; then
  echo "setup: warning: /dev/fuse is missing; mounting will fail until the fuse module is loaded (modprobe fuse)" >&2
fi
echo "setup: ok" >&2
