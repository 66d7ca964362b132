/**
 * Test helpers for the boot loader: a fake guest memory over ArrayBuffers, hand-built ELF64 and
 * bzImage files, and the locations of the real Debian kernel files.
 * @module
 */
import { GuestMemory, newDirtyBitmap } from "../../memory/guest_memory.ts";
import { ramRegions } from "./layout.ts";

/** A GuestMemory over ArrayBuffers covering `ramRegions(ramBytes)`. */
export function fakeMemory(ramBytes: number): GuestMemory {
  return new GuestMemory({
    regions: ramRegions(ramBytes).map((r, slot) => ({
      gpa: r.gpa,
      sizeBytes: r.sizeBytes,
      slot,
      hostAddr: 0n,
      vmmDirty: newDirtyBitmap(r.sizeBytes),
      buffer: new ArrayBuffer(r.sizeBytes),
    })),
  });
}

/** One segment of a synthetic ELF. */
export interface TestSegment {
  type?: number;
  paddr: number;
  data: Uint8Array;
  memBytes?: number;
}

/**
 * Builds an ELF64 x86_64 file: header, program headers, then each segment's data in order.
 * @param options entry, segments, and an optional PVH entry (adds a PT_NOTE with a Xen note)
 */
export function buildElf(
  options: { entry: number; segments: TestSegment[]; pvhEntry?: number; machine?: number; cls?: number },
): Uint8Array {
  const segs = [...options.segments];
  if (options.pvhEntry !== undefined) {
    const note = new Uint8Array(12 + 4 + 4);
    const nv = new DataView(note.buffer);
    nv.setUint32(0, 4, true);
    nv.setUint32(4, 4, true);
    nv.setUint32(8, 18, true);
    note.set([0x58, 0x65, 0x6e, 0], 12);
    nv.setUint32(16, options.pvhEntry, true);
    // A GNU note first, so the walk has to skip one.
    const gnu = new Uint8Array(12 + 4 + 8);
    const gv = new DataView(gnu.buffer);
    gv.setUint32(0, 4, true);
    gv.setUint32(4, 8, true);
    gv.setUint32(8, 3, true);
    gnu.set([0x47, 0x4e, 0x55, 0], 12);
    const both = new Uint8Array(gnu.length + note.length);
    both.set(gnu);
    both.set(note, gnu.length);
    segs.push({ type: 4, paddr: 0, data: both });
  }
  const phoff = 64;
  let dataOff = phoff + segs.length * 56;
  const size = dataOff + segs.reduce((n, s) => n + s.data.length, 0);
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, options.cls ?? 2, 1, 1], 0);
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, options.machine ?? 62, true);
  v.setUint32(20, 1, true);
  v.setBigUint64(24, BigInt(options.entry), true);
  v.setBigUint64(32, BigInt(phoff), true);
  v.setUint16(52, 64, true);
  v.setUint16(54, 56, true);
  v.setUint16(56, segs.length, true);
  segs.forEach((s, i) => {
    const ph = phoff + i * 56;
    v.setUint32(ph, s.type ?? 1, true);
    v.setUint32(ph + 4, 7, true);
    v.setBigUint64(ph + 8, BigInt(dataOff), true);
    v.setBigUint64(ph + 16, BigInt(s.paddr), true);
    v.setBigUint64(ph + 24, BigInt(s.paddr), true);
    v.setBigUint64(ph + 32, BigInt(s.data.length), true);
    v.setBigUint64(ph + 40, BigInt(s.memBytes ?? s.data.length), true);
    v.setBigUint64(ph + 48, BigInt(s.type === 4 ? 4 : 0x1000), true);
    out.set(s.data, dataOff);
    dataOff += s.data.length;
  });
  return out;
}

/** Header values of a synthetic bzImage. */
export interface TestBzImageOptions {
  setupSects?: number;
  version?: number;
  xloadflags?: number;
  loadflags?: number;
  prefAddress?: number;
  initSize?: number;
  cmdlineSize?: number;
  initrdAddrMax?: number;
  /** The protected-mode kernel bytes. */
  kernel: Uint8Array;
}

/** Builds a bzImage: boot sector with the setup header, setup sectors, protected-mode kernel. */
export function buildBzImage(o: TestBzImageOptions): Uint8Array {
  const sects = o.setupSects ?? 4;
  const setupBytes = ((sects === 0 ? 4 : sects) + 1) * 512;
  const out = new Uint8Array(setupBytes + o.kernel.length);
  const v = new DataView(out.buffer);
  v.setUint8(0x1f1, sects);
  v.setUint32(0x1f4, Math.floor(o.kernel.length / 16), true); // syssize
  v.setUint16(0x1fe, 0xaa55, true);
  v.setUint8(0x200, 0xeb);
  v.setUint8(0x201, 0x6a); // header ends at 0x26c
  v.setUint32(0x202, 0x53726448, true);
  v.setUint16(0x206, o.version ?? 0x020f, true);
  v.setUint8(0x211, o.loadflags ?? 0x01);
  v.setUint32(0x214, 0x100000, true);
  v.setUint32(0x22c, o.initrdAddrMax ?? 0x7fffffff, true);
  v.setUint32(0x230, 0x200000, true);
  v.setUint8(0x234, 1);
  v.setUint8(0x235, 21);
  v.setUint16(0x236, o.xloadflags ?? 0x7f, true);
  v.setUint32(0x238, o.cmdlineSize ?? 2047, true);
  v.setUint32(0x248, 0x100, true);
  v.setUint32(0x24c, 0x80, true);
  v.setBigUint64(0x258, BigInt(o.prefAddress ?? 0x1000000), true);
  v.setUint32(0x260, o.initSize ?? 0x400000, true);
  out.set(o.kernel, setupBytes);
  return out;
}

/** Paths of the real Debian kernel files (env overrides, else .cache/kernels/). */
export function realKernelPaths(): { bzImage: string; vmlinux: string } {
  const cache = new URL("../../../.cache/kernels/", import.meta.url).pathname;
  return {
    bzImage: Deno.env.get("FERRY_TEST_BZIMAGE") ?? `${cache}vmlinuz`,
    vmlinux: Deno.env.get("FERRY_TEST_VMLINUX") ?? `${cache}vmlinux`,
  };
}

/** Reads a real kernel file or fails with how to get it. */
export function readRealKernel(path: string): Uint8Array {
  try {
    return Deno.readFileSync(path);
  } catch (e) {
    throw new Error(
      `Cannot read kernel '${path}': run scripts/fetch_kernel.sh (or set FERRY_TEST_BZIMAGE/FERRY_TEST_VMLINUX)`,
      { cause: e },
    );
  }
}
