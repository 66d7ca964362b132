#!/bin/sh
# Fetches a real Debian kernel for the loader tests (src/machine/boot/*_test.ts), idempotently.
#   .cache/kernels/vmlinuz   the bzImage from linux-image-<abi>-<flavor> (/boot/vmlinuz-*)
#   .cache/kernels/vmlinux   the ELF64 kernel, decompressed from the bzImage payload
#                            (payload_offset at 0x248, payload_length at 0x24c; cloud: LZ4, generic: XZ)
# The ABI package is resolved with `apt-cache depends linux-image-<flavor>-amd64` (apt-get update only
# when that lookup fails). Fast when cached: nothing is downloaded or unpacked again.
# Env: FLAVOR=cloud|generic (default cloud). Prints the two paths on stdout.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
FLAVOR=${FLAVOR:-cloud}
case "$FLAVOR" in
cloud) META=linux-image-cloud-amd64 ;;
generic) META=linux-image-amd64 ;;
*) echo "fetch_kernel.sh: unknown FLAVOR '$FLAVOR' (cloud or generic)" >&2; exit 2 ;;
esac
OUT="$ROOT/.cache/kernels"
[ "$FLAVOR" = cloud ] || OUT="$OUT/$FLAVOR"
mkdir -p "$OUT"
say() { echo "fetch_kernel: $*" >&2; }

# Cached: both files present and the vmlinux newer than the bzImage it came from.
if [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/vmlinux" ] && [ ! "$OUT/vmlinux" -ot "$OUT/vmlinuz" ]; then
  echo "$OUT/vmlinuz"
  echo "$OUT/vmlinux"
  exit 0
fi

resolve() { apt-cache depends "$META" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n 1; }
PKG=$(resolve || true)
if [ -z "$PKG" ]; then
  say "apt-cache does not know $META; running apt-get update"
  apt-get update -qq >/dev/null
  PKG=$(resolve || true)
fi
[ -n "$PKG" ] || { echo "fetch_kernel.sh: cannot resolve the kernel package of '$META'" >&2; exit 1; }

DEB=$(ls "$OUT"/"${PKG}"_*.deb 2>/dev/null | head -n 1 || true)
if [ -z "$DEB" ]; then
  say "downloading $PKG"
  (cd "$OUT" && apt-get download -q -o APT::Sandbox::User=root "$PKG" >/dev/null)
  DEB=$(ls "$OUT"/"${PKG}"_*.deb | head -n 1)
fi

TREE="$OUT/tree"
rm -rf "$TREE"
dpkg-deb -x "$DEB" "$TREE"
VMLINUZ=$(ls "$TREE"/boot/vmlinuz-* | head -n 1)
cp "$VMLINUZ" "$OUT/vmlinuz.tmp"
rm -rf "$TREE"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"

# Little-endian u32 at a byte offset of the bzImage.
u32() { od -An -t u4 -j "$1" -N 4 "$OUT/vmlinuz" | tr -d ' '; }
SETUP_SECTS=$(od -An -t u1 -j 497 -N 1 "$OUT/vmlinuz" | tr -d ' ')
[ "$SETUP_SECTS" = 0 ] && SETUP_SECTS=4
PAYLOAD_OFFSET=$(u32 584) # 0x248, relative to the protected-mode kernel
PAYLOAD_LENGTH=$(u32 588) # 0x24c
START=$(((SETUP_SECTS + 1) * 512 + PAYLOAD_OFFSET))

MAGIC=$(od -An -t x1 -j "$START" -N 4 "$OUT/vmlinuz" | tr -d ' ')
case "$MAGIC" in
02214c18) DECOMP="lz4 -dc" ; TOOL=lz4 ; DEBPKG=lz4 ;;
fd377a58) DECOMP="xz -dc" ; TOOL=xz ; DEBPKG=xz-utils ;;
*) echo "fetch_kernel.sh: unknown payload compression (magic $MAGIC) in $OUT/vmlinuz" >&2; exit 1 ;;
esac
if ! command -v "$TOOL" >/dev/null 2>&1; then
  say "installing Debian package $DEBPKG"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$DEBPKG" >/dev/null ||
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$DEBPKG" >/dev/null; }
fi
# The LZ4 legacy frame is followed by the 4-byte decompressed size, which lz4 reports as trailing
# garbage: keep its output and check the ELF magic instead of its exit code.
tail -c +"$((START + 1))" "$OUT/vmlinuz" | head -c "$PAYLOAD_LENGTH" | $DECOMP >"$OUT/vmlinux.tmp" 2>/dev/null || true
if [ "$(od -An -t x1 -N 4 "$OUT/vmlinux.tmp" | tr -d ' ')" != 7f454c46 ]; then
  echo "fetch_kernel.sh: decompressed payload of $OUT/vmlinuz is not an ELF file" >&2
  exit 1
fi
mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
say "$PKG ready"
echo "$OUT/vmlinuz"
echo "$OUT/vmlinux"
