#!/usr/bin/env bash
# Prepare everything needed to cross-build for the boards and to run aarch64 builds under qemu-user.
#
#   scripts/setup-aarch64-sysroot.sh            # idempotent; a second run only checks the stamp
#   scripts/setup-aarch64-sysroot.sh --force    # rebuild the cached sysroot
#
# What it does (Debian/Ubuntu host):
#   1. apt-installs the cross compilers and qemu-user if they are missing
#      (gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross qemu-user).
#   2. downloads (never installs) Debian's arm64 python3.11 + the libraries it and libtvm need with
#      `apt-get download`, and unpacks them with `dpkg -x` into .cache/aarch64/root, so nothing lands in the
#      host's arm64 multiarch by accident.
#   3. puts the aarch64 wheels of apache-tvm / apache-tvm-ffi / numpy (same versions as the host venv)
#      into .cache/aarch64/site with `pip install --target --platform`, which unpacks wheels and runs no code.
#
# The result is used by segcompile/compile/qemu.py as:
#   qemu-aarch64 -L .cache/aarch64/root -E PYTHONPATH=.cache/aarch64/site .cache/aarch64/root/usr/bin/python3.11
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SEGCOMPILE_AARCH64_CACHE:-$REPO/.cache/aarch64}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
ROOT="$CACHE/root"
SITE="$CACHE/site"
DEBS="$CACHE/debs"
STAMP="$CACHE/.ready"  # the Makefile's setup target depends on this file

HOST_APT_PACKAGES=(gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross qemu-user)
# python3.11's Depends closure on bookworm (apt-cache depends --recurse), plus libstdc++6 for libtvm.
ARM64_PACKAGES=(
  python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
  libc6 libgcc-s1 libstdc++6 gcc-12-base zlib1g libexpat1 libffi8 libbz2-1.0 liblzma5 libcrypt1 libdb5.3
  libncursesw6 libtinfo6 libreadline8 libsqlite3-0 libssl3 libuuid1 libnsl2 libtirpc3
  libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 libcom-err2
)

log() { echo "[setup-aarch64] $*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ "${1:-}" = "--force" ]; then
  rm -rf "$CACHE"
fi

if [ ! -x "$PYTHON" ]; then
  log "no python at $PYTHON (create the venv first, or set PYTHON=...)"
  exit 1
fi
TVM_VERSION="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("apache-tvm"))')"
FFI_VERSION="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("apache-tvm-ffi"))')"
NUMPY_VERSION="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("numpy"))')"
WANT="tvm=$TVM_VERSION ffi=$FFI_VERSION numpy=$NUMPY_VERSION packages=${ARM64_PACKAGES[*]}"

missing=()
for tool in aarch64-linux-gnu-gcc arm-linux-gnueabihf-gcc qemu-aarch64; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# The cross compilers link shared objects only with the target's C runtime start files.
for crt in /usr/aarch64-linux-gnu/lib/crti.o /usr/arm-linux-gnueabihf/lib/crti.o; do
  [ -f "$crt" ] || missing+=("$crt")
done
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ ${#missing[@]} -eq 0 ]; then
  touch "$STAMP"  # newer than this script, so make does not re-run it
  log "ready (cached in $CACHE)"
  exit 0
fi

apt_updated=0
if [ ${#missing[@]} -gt 0 ]; then
  log "installing host packages: ${HOST_APT_PACKAGES[*]} (missing: ${missing[*]})"
  as_root apt-get update -q
  apt_updated=1
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${HOST_APT_PACKAGES[@]}"
fi

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  log "enabling the arm64 package architecture (for apt-get download only)"
  as_root dpkg --add-architecture arm64
  apt_updated=0
fi

mkdir -p "$DEBS"
need_download=0
for pkg in "${ARM64_PACKAGES[@]}"; do
  compgen -G "$DEBS/${pkg}_*_arm64.deb" >/dev/null || need_download=1
done
if [ "$need_download" -eq 1 ]; then
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -q
  fi
  log "downloading arm64 packages into $DEBS"
  # As root, apt's download sandbox user (_apt) may not write into the repo; fetch as the caller instead.
  sandbox=()
  [ "$(id -u)" -eq 0 ] && sandbox=(-o APT::Sandbox::User=root)
  (cd "$DEBS" && apt-get download -q "${sandbox[@]}" "${ARM64_PACKAGES[@]/%/:arm64}")
fi

log "unpacking sysroot into $ROOT"
rm -rf "$ROOT.partial" && mkdir -p "$ROOT.partial"
for deb in "$DEBS"/*_arm64.deb; do
  dpkg -x "$deb" "$ROOT.partial"
done
rm -rf "$ROOT" && mv "$ROOT.partial" "$ROOT"

log "installing aarch64 wheels into $SITE"
rm -rf "$SITE.partial"
"$PYTHON" -m pip install -q --disable-pip-version-check --no-compile --target "$SITE.partial" \
  --only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 3.11 --implementation cp --abi cp311 \
  "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$FFI_VERSION" "numpy==$NUMPY_VERSION"
rm -rf "$SITE" && mv "$SITE.partial" "$SITE"

log "smoke test: importing tvm under qemu-aarch64"
qemu-aarch64 -L "$ROOT" -E PYTHONPATH="$SITE" -E PYTHONNOUSERSITE=1 "$ROOT/usr/bin/python3.11" -c \
  'import platform, numpy, tvm; print(platform.machine(), "numpy", numpy.__version__, "tvm", tvm.__version__)'

echo "$WANT" > "$STAMP"
log "ready (cached in $CACHE)"
