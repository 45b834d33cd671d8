#!/usr/bin/env bash
# Installs what building and running vorpalfs needs on a Debian machine. Idempotent: installs
# only what is missing. Run as root (or with sudo available).
set -euo pipefail

# Every external program the build, the tests and scripts/bench call comes from one of these
# (the test harness checks for each before any test runs and names the package to install).
packages=(
  build-essential   # cc for the hello example and for crates that build C
  clang libclang-dev pkg-config   # librocksdb-sys builds RocksDB and generates bindings
  fuse3             # fusermount3 and /etc/fuse.conf for the mount
  util-linux mount  # mount, umount, setpriv, unshare
  busybox-static    # the rootfs of examples/hermetic
  python3 python3-venv   # tests run python3 from the mount; test.sh installs moto in a venv
  attr              # getfattr: the tests read the digest extended attribute
  procps            # pgrep, pkill: the tests look for processes a build left behind
  diffutils findutils coreutils gawk tar   # diff -r, find, xargs, sha256sum, awk, tar in the tests
  curl bc zstd time # scripts/bench: readiness checks, arithmetic, the Vorpal pipeline, /usr/bin/time
  valgrind          # the performance gate counts instructions under callgrind
  passwd            # useradd, usermod: the build users below
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

# Build users: a root daemon runs build steps as unprivileged uids, the subordinate ids of the
# system user `vorpalfs` (one per artifact running at once), never as root.
sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
if ! id vorpalfs >/dev/null 2>&1; then
  echo "setup: creating the system user vorpalfs (its subordinate ids are the build users)" >&2
  $sudo useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin vorpalfs
fi
first=1879048192; last=$((first + 65535))   # 0x70000000: far above login and container ranges
for f in /etc/subuid /etc/subgid; do
  if ! grep -q '^vorpalfs:' "$f" 2>/dev/null; then
    opt=--add-subuids; [ "$f" = /etc/subgid ] && opt=--add-subgids
    $sudo usermod "$opt" "$first-$last" vorpalfs
  fi
done

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install a Rust toolchain (1.88 or newer) with rustup first" >&2
  exit 1
fi
if [ ! -e /dev/fuse ]; then
  echo "setup: warning: /dev/fuse is missing; mounting will fail until the fuse module is loaded (modprobe fuse)" >&2
fi
echo "setup: ok" >&2
