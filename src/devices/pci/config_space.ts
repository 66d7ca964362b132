/**
 * A PCI function's configuration space (type 0 header, 4 KiB as PCIe's ECAM sees it), kept in a
 * SharedArrayBuffer so every vCPU Worker that handles a config access sees one device
 * (DESIGN.md §2). What is writable is decided by per-byte masks built from the same
 * {@linkcode PciFunctionSpec} in every thread, so the masks need not be shared.
 *
 * Covers: vendor/device/class ids, command (I/O, memory, bus master, INTx disable …), status with
 * write-1-to-clear error bits and the capability-list bit, memory BARs (32- and 64-bit) whose
 * sizes read back through the usual all-ones probe, interrupt line/pin, and a capability list
 * (each capability brings its own write mask, e.g. MSI-X's enable and function-mask bits).
 *
 * State (saved by the owner of the function, e.g. the virtio transport): the first 256 bytes.
 * Restore keeps this side's read-only bytes and takes only writable bits from the payload, after
 * checking the ids match.
 * @module
 */
import { lockShared, unlockShared } from "../shared_lock.ts";

/** Bytes of config space per function (PCIe extended config space). */
export const PCI_CONFIG_BYTES = 4096;
/** Bytes of the conventional header + device-specific area. */
export const PCI_CONFIG_LEGACY_BYTES = 256;

/** Header offsets. */
export const PCI_VENDOR_ID = 0x00, PCI_DEVICE_ID = 0x02, PCI_COMMAND = 0x04, PCI_STATUS = 0x06;
export const PCI_REVISION_ID = 0x08, PCI_CLASS_PROG = 0x09, PCI_CACHE_LINE_SIZE = 0x0c;
export const PCI_LATENCY_TIMER = 0x0d, PCI_HEADER_TYPE = 0x0e, PCI_BAR0 = 0x10;
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c, PCI_SUBSYSTEM_ID = 0x2e, PCI_CAPABILITY_LIST = 0x34;
export const PCI_INTERRUPT_LINE = 0x3c, PCI_INTERRUPT_PIN = 0x3d;
/** Command bits. */
export const PCI_COMMAND_IO = 0x1, PCI_COMMAND_MEMORY = 0x2, PCI_COMMAND_MASTER = 0x4;
export const PCI_COMMAND_INTX_DISABLE = 0x400;
/** Status: capability list present. */
export const PCI_STATUS_CAP_LIST = 0x10;
/** First byte after the type 0 header, where capabilities start. */
export const PCI_CAP_START = 0x40;

const COMMAND_WRITABLE = 0x0547; // IO, MEM, MASTER, PARITY, SERR, INTX_DISABLE
const STATUS_W1C = 0xf900; // master data parity, target/master aborts, SERR, parity error
const LOCK_OFFSET = PCI_CONFIG_BYTES; // one Int32 lock word after the bytes
const SHARED_BYTES = PCI_CONFIG_BYTES + 4;

/** One memory BAR. I/O BARs are not modelled (ferry's devices use MMIO only). */
export interface PciBarSpec {
  /** BAR register index 0..5 (a 64-bit BAR uses `index` and `index + 1`). */
  index: number;
  /** A power of two ≥ 16. */
  sizeBytes: number;
  /** 64-bit BAR (type 10b). */
  is64: boolean;
  prefetchable: boolean;
}

/** A capability: its full bytes (id and next pointer filled in by the builder) and write mask. */
export interface PciCapabilitySpec {
  /** Capability id (0x09 vendor, 0x11 MSI-X, 0x10 PCIe …). */
  id: number;
  /** The whole capability, bytes 0 and 1 (id, next) included; they are overwritten. */
  bytes: Uint8Array;
  /** Writable bits per byte (same length as `bytes`), none when absent. */
  writeMask?: Uint8Array;
}

/** Everything that decides a function's read-only contents and masks. Plain data. */
export interface PciFunctionSpec {
  vendorId: number;
  deviceId: number;
  revisionId: number;
  /** class << 16 | subclass << 8 | prog-if. */
  classCode: number;
  subsystemVendorId: number;
  subsystemId: number;
  bars: PciBarSpec[];
  /** 0: no INTx; 1..4: INTA..INTD. */
  interruptPin: number;
  capabilities: PciCapabilitySpec[];
  /** Read-only bytes placed as is, e.g. a chipset register such as Q35's PCIEXBAR at 0x60. */
  fixedBytes?: Array<{ offset: number; bytes: Uint8Array }>;
}

/** Where a capability landed. */
export interface PlacedCapability {
  id: number;
  offset: number;
  length: number;
}

function le16(b: Uint8Array, off: number, v: number): void {
  b[off] = v & 0xff;
  b[off + 1] = (v >>> 8) & 0xff;
}

function le32(b: Uint8Array, off: number, v: number): void {
  le16(b, off, v & 0xffff);
  le16(b, off + 2, (v >>> 16) & 0xffff);
}

function rd32(b: Uint8Array, off: number): number {
  return (b[off]! | (b[off + 1]! << 8) | (b[off + 2]! << 16) | (b[off + 3]! << 24)) >>> 0;
}

function checkSpec(spec: PciFunctionSpec): void {
  const used = new Set<number>();
  for (const bar of spec.bars) {
    const n = bar.is64 ? 2 : 1;
    if (!Number.isInteger(bar.index) || bar.index < 0 || bar.index + n > 6) {
      throw new RangeError(`Cannot build PCI config space: BAR ${bar.index} is outside 0..5`);
    }
    if (bar.sizeBytes < 16 || (bar.sizeBytes & (bar.sizeBytes - 1)) !== 0 || bar.sizeBytes > 2 ** 31) {
      throw new RangeError(
        `Cannot build PCI config space: BAR ${bar.index} size ${bar.sizeBytes} is not a power of two 16..2^31`,
      );
    }
    for (let i = 0; i < n; i++) {
      if (used.has(bar.index + i)) {
        throw new RangeError(`Cannot build PCI config space: BAR ${bar.index + i} is used twice`);
      }
      used.add(bar.index + i);
    }
  }
}

/** The read-only image and masks of a function, computed identically in every thread. */
interface Layout {
  image: Uint8Array;
  writeMask: Uint8Array;
  w1cMask: Uint8Array;
  caps: PlacedCapability[];
}

function buildLayout(spec: PciFunctionSpec): Layout {
  checkSpec(spec);
  const image = new Uint8Array(PCI_CONFIG_BYTES);
  const writeMask = new Uint8Array(PCI_CONFIG_BYTES);
  const w1cMask = new Uint8Array(PCI_CONFIG_BYTES);
  le16(image, PCI_VENDOR_ID, spec.vendorId);
  le16(image, PCI_DEVICE_ID, spec.deviceId);
  image[PCI_REVISION_ID] = spec.revisionId;
  image[PCI_CLASS_PROG] = spec.classCode & 0xff;
  image[PCI_CLASS_PROG + 1] = (spec.classCode >>> 8) & 0xff;
  image[PCI_CLASS_PROG + 2] = (spec.classCode >>> 16) & 0xff;
  le16(image, PCI_SUBSYSTEM_VENDOR_ID, spec.subsystemVendorId);
  le16(image, PCI_SUBSYSTEM_ID, spec.subsystemId);
  image[PCI_INTERRUPT_PIN] = spec.interruptPin;
  le16(writeMask, PCI_COMMAND, COMMAND_WRITABLE);
  le16(w1cMask, PCI_STATUS, STATUS_W1C);
  writeMask[PCI_CACHE_LINE_SIZE] = 0xff;
  writeMask[PCI_LATENCY_TIMER] = 0xff;
  writeMask[PCI_INTERRUPT_LINE] = 0xff;
  for (const bar of spec.bars) {
    const off = PCI_BAR0 + 4 * bar.index;
    const flags = (bar.is64 ? 0x4 : 0) | (bar.prefetchable ? 0x8 : 0);
    image[off] = flags;
    le32(writeMask, off, ~(bar.sizeBytes - 1) & 0xfffffff0);
    if (bar.is64) le32(writeMask, off + 4, 0xffffffff);
  }
  for (const f of spec.fixedBytes ?? []) image.set(f.bytes, f.offset);
  const caps: PlacedCapability[] = [];
  let at = PCI_CAP_START;
  let prevNext = PCI_CAPABILITY_LIST;
  for (const cap of spec.capabilities) {
    const len = cap.bytes.length;
    if (len < 2 || at + len > PCI_CONFIG_LEGACY_BYTES) {
      throw new RangeError(`Cannot build PCI config space: capability 0x${cap.id.toString(16)} does not fit`);
    }
    image.set(cap.bytes, at);
    image[at] = cap.id;
    image[at + 1] = 0;
    if (cap.writeMask) writeMask.set(cap.writeMask.subarray(0, len), at);
    writeMask[at] = 0;
    writeMask[at + 1] = 0;
    image[prevNext] = at;
    prevNext = at + 1;
    caps.push({ id: cap.id, offset: at, length: len });
    at = (at + len + 3) & ~3;
  }
  if (caps.length > 0) image[PCI_STATUS] = image[PCI_STATUS]! | PCI_STATUS_CAP_LIST;
  return { image, writeMask, w1cMask, caps };
}

/** Options for {@linkcode PciConfigSpace}. */
export interface PciConfigSpaceOptions {
  /** From {@linkcode PciConfigSpace.createShared}, the same buffer in every thread. */
  shared: SharedArrayBuffer;
  spec: PciFunctionSpec;
  /**
   * Called after a write changed where the BARs decode (a BAR moved, or memory decode turned on
   * or off), with the old and new guest addresses per BAR index (undefined when not decoded).
   */
  onBarsChanged?: (before: (number | undefined)[], after: (number | undefined)[]) => void;
  /** Called after any write, with the range written (e.g. MSI-X reacts to its control word). */
  onWrite?: (offset: number, data: Uint8Array) => void;
  /** Called after a read, to patch bytes a device computes on access (e.g. a data window). */
  onRead?: (offset: number, data: Uint8Array) => void;
}

/** One function's configuration space over shared bytes; see the module doc. */
export class PciConfigSpace {
  readonly spec: PciFunctionSpec;
  readonly capabilities: readonly PlacedCapability[];
  readonly #bytes: Uint8Array;
  readonly #lock: Int32Array;
  readonly #layout: Layout;
  readonly #onBars: PciConfigSpaceOptions["onBarsChanged"];
  readonly #onWrite: PciConfigSpaceOptions["onWrite"];
  readonly #onRead: PciConfigSpaceOptions["onRead"];

  /** Allocates the shared bytes and writes the power-on contents of `spec`. */
  static createShared(spec: PciFunctionSpec): SharedArrayBuffer {
    const shared = new SharedArrayBuffer(SHARED_BYTES);
    new Uint8Array(shared, 0, PCI_CONFIG_BYTES).set(buildLayout(spec).image);
    return shared;
  }

  constructor(options: PciConfigSpaceOptions) {
    if (!(options.shared instanceof SharedArrayBuffer) || options.shared.byteLength !== SHARED_BYTES) {
      throw new TypeError(
        "Cannot create PciConfigSpace: 'shared' must come from PciConfigSpace.createShared()",
      );
    }
    this.spec = options.spec;
    this.#layout = buildLayout(options.spec);
    this.capabilities = this.#layout.caps;
    this.#bytes = new Uint8Array(options.shared, 0, PCI_CONFIG_BYTES);
    this.#lock = new Int32Array(options.shared, LOCK_OFFSET, 1);
    this.#onBars = options.onBarsChanged;
    this.#onWrite = options.onWrite;
    this.#onRead = options.onRead;
  }

  /** The offset of the first capability with `id`, or -1. */
  findCapability(id: number): number {
    return this.#layout.caps.find((c) => c.id === id)?.offset ?? -1;
  }

  /** Reads `data.length` bytes at `offset` (bytes past 4 KiB read as all-ones). */
  read(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const o = offset + i;
      data[i] = o >= 0 && o < PCI_CONFIG_BYTES ? Atomics.load(this.#bytes, o) : 0xff;
    }
    this.#onRead?.(offset, data);
  }

  /** A little-endian u16/u32 read at `offset`. */
  readU16(offset: number): number {
    return this.#bytes[offset]! | (this.#bytes[offset + 1]! << 8);
  }

  readU32(offset: number): number {
    return rd32(this.#bytes, offset);
  }

  /** Applies a guest write through the masks. */
  write(offset: number, data: Uint8Array): void {
    const { writeMask, w1cMask } = this.#layout;
    const watchBars = this.#onBars !== undefined;
    lockShared(this.#lock, 0);
    let before: (number | undefined)[] = [];
    let after: (number | undefined)[] = [];
    try {
      if (watchBars) before = this.#decodedBars();
      for (let i = 0; i < data.length; i++) {
        const o = offset + i;
        if (o < 0 || o >= PCI_CONFIG_BYTES) continue;
        const m = writeMask[o]!, c = w1cMask[o]!;
        if (m === 0 && c === 0) continue;
        const v = data[i]!;
        const cur = this.#bytes[o]!;
        this.#bytes[o] = ((cur & ~m) | (v & m)) & ~(v & c);
      }
      if (watchBars) after = this.#decodedBars();
    } finally {
      unlockShared(this.#lock, 0);
    }
    this.#onWrite?.(offset, data);
    if (watchBars && before.some((b, i) => b !== after[i])) this.#onBars!(before, after);
  }

  /** Writes bytes directly, bypassing masks (device-side updates such as status bits). */
  setRaw(offset: number, bytes: Uint8Array): void {
    lockShared(this.#lock, 0);
    try {
      this.#bytes.set(bytes, offset);
    } finally {
      unlockShared(this.#lock, 0);
    }
  }

  /** The BAR's programmed address (whether or not decoding is on). */
  barAddress(index: number): number {
    const bar = this.spec.bars.find((b) => b.index === index);
    if (!bar) return 0;
    const off = PCI_BAR0 + 4 * index;
    const lo = (rd32(this.#bytes, off) & 0xfffffff0) >>> 0;
    const hi = bar.is64 ? rd32(this.#bytes, off + 4) : 0;
    return hi * 2 ** 32 + lo;
  }

  /** Sets a BAR's address (firmware-style assignment by the machine). */
  setBarAddress(index: number, gpa: number): void {
    const bar = this.spec.bars.find((b) => b.index === index);
    if (!bar) throw new RangeError(`Cannot set BAR ${index}: the function has no such BAR`);
    if (gpa % bar.sizeBytes !== 0) {
      throw new RangeError(`Cannot set BAR ${index} to 0x${gpa.toString(16)}: not aligned to its size`);
    }
    const b = new Uint8Array(bar.is64 ? 8 : 4);
    le32(b, 0, (gpa % 2 ** 32) | (this.#layout.image[PCI_BAR0 + 4 * index]! & 0xf));
    if (bar.is64) le32(b, 4, Math.floor(gpa / 2 ** 32));
    this.setRaw(PCI_BAR0 + 4 * index, b);
  }

  /** The command register. */
  get command(): number {
    return this.readU16(PCI_COMMAND);
  }

  /** Per BAR index 0..5: the guest address it decodes at, or undefined (memory decode off, no BAR). */
  decodedBars(): (number | undefined)[] {
    return this.#decodedBars();
  }

  #decodedBars(): (number | undefined)[] {
    const out: (number | undefined)[] = [undefined, undefined, undefined, undefined, undefined, undefined];
    if (!(this.command & PCI_COMMAND_MEMORY)) return out;
    for (const bar of this.spec.bars) {
      const a = this.barAddress(bar.index);
      if (a !== 0) out[bar.index] = a;
    }
    return out;
  }

  /** The first 256 bytes, for migration. */
  save(): Uint8Array {
    return this.#bytes.slice(0, PCI_CONFIG_LEGACY_BYTES);
  }

  /**
   * Checks a saved header against this function: the ids (vendor, device, class, subsystem)
   * must be equal.
   * @returns an error detail, or undefined when it fits
   */
  checkSaved(saved: Uint8Array): string | undefined {
    if (saved.length !== PCI_CONFIG_LEGACY_BYTES) return `must be ${PCI_CONFIG_LEGACY_BYTES} bytes`;
    const img = this.#layout.image;
    for (
      const [off, len, name] of [[0, 4, "vendor/device id"], [8, 4, "class code"], [
        0x2c,
        4,
        "subsystem id",
      ]] as const
    ) {
      for (let i = 0; i < len; i++) {
        if (saved[off + i] !== img[off + i]) {
          return `holds another ${name} (0x${rd32(saved, off).toString(16)})`;
        }
      }
    }
    return undefined;
  }

  /** Applies a checked header: writable and write-1-to-clear bits from `saved`, the rest kept. */
  restore(saved: Uint8Array): void {
    const { image, writeMask, w1cMask } = this.#layout;
    lockShared(this.#lock, 0);
    try {
      for (let o = 0; o < PCI_CONFIG_LEGACY_BYTES; o++) {
        const m = writeMask[o]! | w1cMask[o]!;
        this.#bytes[o] = (image[o]! & ~m) | (saved[o]! & m);
      }
    } finally {
      unlockShared(this.#lock, 0);
    }
  }

  /** Back to power-on contents (machine reset). */
  reset(): void {
    lockShared(this.#lock, 0);
    try {
      this.#bytes.set(this.#layout.image);
    } finally {
      unlockShared(this.#lock, 0);
    }
  }
}
