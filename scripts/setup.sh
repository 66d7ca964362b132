#!/bin/sh
# Installs and builds what ferry needs, idempotently; fast when everything is already there.
#   Zig      pinned, from PyPI (package ziglang) into .tools/zig
#   qemu.qmp pinned, from PyPI into .tools/qemu-qmp (QEMU's own QMP library, driven against ferry in tests)
#   Debian   socat, ncat (QMP clients in tests), qemu-system-x86 (the benchmark peer and a guest check),
#            iproute2 and openssl (network namespaces, tc and certificates in tests)
#   zig build  the shim (zig-out/lib/libferry_shim.so) and the probe guest (zig-out/guest/probe.elf)
# Flags: --quiet (print nothing when there is nothing to do), --bench (also what benchmarks need).
set -eu
ZIG_VERSION=0.14.1
QEMU_QMP_VERSION=0.0.6
cd "$(dirname "$0")/.."
ROOT=$(pwd)
QUIET=0
for a in "$@"; do
  case "$a" in
  --quiet) QUIET=1 ;;
  --bench) ;;
  *) echo "setup.sh: unknown flag '$a'" >&2; exit 2 ;;
  esac
done
say() { [ "$QUIET" = 1 ] || echo "setup: $*" >&2; }

# 1. Zig from PyPI.
ZIG="$ROOT/.tools/zig/ziglang/zig"
if [ ! -x "$ZIG" ] || [ "$("$ZIG" version 2>/dev/null)" != "$ZIG_VERSION" ]; then
  say "installing zig $ZIG_VERSION from PyPI"
  rm -rf "$ROOT/.tools/zig"
  python3 -m pip install --quiet --disable-pip-version-check --target "$ROOT/.tools/zig" "ziglang==$ZIG_VERSION"
fi

# 1b. QEMU's python QMP library from PyPI (tests/qemu_qmp_test.ts puts .tools/qemu-qmp on PYTHONPATH).
QMPLIB="$ROOT/.tools/qemu-qmp"
if [ "$(cat "$QMPLIB/.version" 2>/dev/null)" != "$QEMU_QMP_VERSION" ]; then
  say "installing qemu.qmp $QEMU_QMP_VERSION from PyPI"
  rm -rf "$QMPLIB"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$QMPLIB" "qemu.qmp==$QEMU_QMP_VERSION"
  echo "$QEMU_QMP_VERSION" >"$QMPLIB/.version"
fi

# 2. Debian packages (root on these machines; apt-get update once, only when something is missing).
need=""
command -v socat >/dev/null 2>&1 || need="$need socat"
command -v ncat >/dev/null 2>&1 || need="$need ncat"
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
# ip/tc: network namespaces and throttled links in the migration tests; openssl: their TLS certificates.
command -v tc >/dev/null 2>&1 || need="$need iproute2"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ]; then
    say "installing Debian packages:$need"
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
  else
    say "warning: missing$need and not root; tests that need them are skipped"
  fi
fi

# 3. The shim and the probe guest (zig's cache makes this a no-op when nothing changed).
if [ ! -f zig-out/lib/libferry_shim.so ] || [ ! -f zig-out/guest/probe.elf ] ||
  [ -n "$(find build.zig shim guest -newer zig-out/.stamp 2>/dev/null | head -n 1)" ] || [ ! -f zig-out/.stamp ]; then
  say "zig build"
  "$ZIG" build -Doptimize=ReleaseSafe
  touch zig-out/.stamp
fi

# 4. Real Debian kernel files for the loader's unit tests (cached in .cache/kernels).
sh scripts/fetch_kernel.sh >/dev/null
