/**
 * MSI-X for ferry's PCI functions, and the VM-wide MSI routing table behind it.
 *
 * - {@linkcode MsixVectors}: one function's table and pending-bit array (PBA) in a BAR, plus the
 *   capability's enable and function-mask bits. Kept in a SharedArrayBuffer: vCPU Workers handle
 *   the guest's table writes, the I/O Worker raises vectors, the main thread saves and restores.
 *   A masked vector's interrupt is remembered in the PBA and delivered on unmask.
 * - {@linkcode MsiRouting}: every vector has its own KVM GSI (allocated at machine build) and an
 *   irqfd bound to it; the GSI's route holds the vector's MSI address/data. `KVM_SET_GSI_ROUTING`
 *   replaces the VM's whole table, so the routes of every function live in one shared table and a
 *   commit (from whichever thread changed an entry) always sends all of them, together with the
 *   in-kernel irqchip's default routes for GSI 0..23.
 *
 * Routes are installed when a vector is unmasked (Linux writes address and data with the vector
 * masked, then unmasks it), when address/data change while unmasked, and on restore.
 * @module
 */
import type { PciCapabilitySpec, PciConfigSpace } from "./config_space.ts";
import { lockShared, unlockShared } from "../shared_lock.ts";

/** MSI-X capability id. */
export const PCI_CAP_ID_MSIX = 0x11;
/** Message control: MSI-X enable. */
export const MSIX_CONTROL_ENABLE = 0x8000;
/** Message control: function mask. */
export const MSIX_CONTROL_MASKALL = 0x4000;
/** Bytes per table entry. */
export const MSIX_ENTRY_BYTES = 16;
/** Vector control: masked. */
export const MSIX_VECTOR_MASKED = 1;
/** The first GSI past the IOAPIC's 24 pins: MSI routes start here. */
export const MSI_GSI_BASE = 24;

/** A route for `KVM_SET_GSI_ROUTING`. */
export type GsiRoute =
  | { gsi: number; kind: "irqchip"; chip: number; pin: number }
  | { gsi: number; kind: "msi"; addressLo: number; addressHi: number; data: number };

/** What sets the VM's GSI routes (`VmFd.setGsiRouting`). */
export interface GsiRoutingTarget {
  setGsiRouting(routes: GsiRoute[]): void;
}

/** KVM's default irqchip routes (arch/x86/kvm/irq_comm.c): GSI 0..15 to IOAPIC and PIC, 16..23 IOAPIC. */
export function defaultIrqchipRoutes(): GsiRoute[] {
  const out: GsiRoute[] = [];
  for (let irq = 0; irq < 24; irq++) {
    out.push({ gsi: irq, kind: "irqchip", chip: 2, pin: irq });
    if (irq < 16) out.push({ gsi: irq, kind: "irqchip", chip: irq < 8 ? 0 : 1, pin: irq % 8 });
  }
  return out;
}

const R_LOCK = 0, R_COUNT = 1, R_NEXT = 2, R_HEADER = 4, R_ENTRY = 4;

/** The VM-wide MSI route table; see the module doc. One shared buffer, a view per thread. */
export class MsiRouting {
  readonly #w: Int32Array;
  readonly #target: GsiRoutingTarget | undefined;
  #last: GsiRoute[] = [];

  /**
   * @param maxRoutes how many MSI GSIs the machine may allocate
   * @default maxRoutes 1024
   */
  static createShared(maxRoutes = 1024): SharedArrayBuffer {
    const shared = new SharedArrayBuffer(4 * (R_HEADER + R_ENTRY * maxRoutes));
    const w = new Int32Array(shared);
    w[R_COUNT] = maxRoutes;
    return shared;
  }

  /**
   * @param shared from {@linkcode MsiRouting.createShared}
   * @param target the VM; without one (tests) commits are only recorded in {@linkcode lastCommitted}
   */
  constructor(shared: SharedArrayBuffer, target?: GsiRoutingTarget) {
    this.#w = new Int32Array(shared);
    this.#target = target;
  }

  /**
   * Reserves `count` consecutive GSIs (main thread, at machine build).
   * @returns the first GSI
   */
  allocate(count: number): number {
    const w = this.#w;
    const first = Atomics.add(w, R_NEXT, count);
    if (first + count > w[R_COUNT]!) {
      throw new RangeError(`Cannot allocate ${count} MSI routes: only ${w[R_COUNT]} GSIs are available`);
    }
    return MSI_GSI_BASE + first;
  }

  /**
   * Sets the MSI route of `gsi` (not yet committed).
   * @returns true when the route changed
   */
  set(gsi: number, addressLo: number, addressHi: number, data: number): boolean {
    const i = this.#index(gsi);
    const w = this.#w;
    lockShared(w, R_LOCK);
    try {
      if (
        w[i] === 1 && w[i + 1] === (addressLo | 0) && w[i + 2] === (addressHi | 0) && w[i + 3] === (data | 0)
      ) {
        return false;
      }
      w[i] = 1;
      w[i + 1] = addressLo;
      w[i + 2] = addressHi;
      w[i + 3] = data;
      return true;
    } finally {
      unlockShared(w, R_LOCK);
    }
  }

  /** Sends the whole table (irqchip defaults + every MSI route) to KVM. */
  commit(): void {
    const w = this.#w;
    lockShared(w, R_LOCK);
    try {
      const routes = defaultIrqchipRoutes();
      const used = Atomics.load(w, R_NEXT);
      for (let k = 0; k < used; k++) {
        const i = R_HEADER + R_ENTRY * k;
        if (w[i] !== 1) continue;
        routes.push({
          gsi: MSI_GSI_BASE + k,
          kind: "msi",
          addressLo: w[i + 1]! >>> 0,
          addressHi: w[i + 2]! >>> 0,
          data: w[i + 3]! >>> 0,
        });
      }
      this.#target?.setGsiRouting(routes);
      this.#last = routes;
    } finally {
      unlockShared(w, R_LOCK);
    }
  }

  /** The routes this thread last committed (for tests and diagnostics). */
  get lastCommitted(): readonly GsiRoute[] {
    return this.#last;
  }

  #index(gsi: number): number {
    const k = gsi - MSI_GSI_BASE;
    if (!Number.isInteger(k) || k < 0 || k >= this.#w[R_COUNT]!) {
      throw new RangeError(`Cannot route GSI ${gsi}: outside the MSI range`);
    }
    return R_HEADER + R_ENTRY * k;
  }
}

/**
 * The MSI-X capability bytes for `vectors` entries, table and PBA in BAR `bar`.
 * @returns the capability spec (writable: enable and function mask)
 */
export function msixCapability(
  vectors: number,
  bar: number,
  tableOffset: number,
  pbaOffset: number,
): PciCapabilitySpec {
  const bytes = new Uint8Array(12);
  const dv = new DataView(bytes.buffer);
  dv.setUint16(2, vectors - 1, true);
  dv.setUint32(4, tableOffset | bar, true);
  dv.setUint32(8, pbaOffset | bar, true);
  const writeMask = new Uint8Array(12);
  writeMask[3] = 0xc0;
  return { id: PCI_CAP_ID_MSIX, bytes, writeMask };
}

/** Result of {@linkcode MsixVectors.signal}. */
export type MsixSignal = "delivered" | "pending" | "disabled";

/** Options for {@linkcode MsixVectors}. */
export interface MsixVectorsOptions {
  /** From {@linkcode MsixVectors.createShared}; the same buffer in every thread. */
  shared: SharedArrayBuffer;
  vectors: number;
  /** The function's config space (holds the capability's control word). */
  config: PciConfigSpace;
  /** GSI of vector 0; vector v uses `gsiBase + v`. */
  gsiBase: number;
  routing: MsiRouting;
  /** Raises vector `v` (writes its irqfd). */
  fire: (vector: number) => void;
}

const M_LOCK = 0, M_TABLE = 4; // byte offsets

/** One function's MSI-X table and PBA; see the module doc. */
export class MsixVectors {
  readonly vectors: number;
  readonly #lock: Int32Array;
  readonly #table: Uint8Array;
  readonly #tableDv: DataView;
  readonly #pba: Uint8Array;
  readonly #config: PciConfigSpace;
  readonly #capOffset: number;
  readonly #gsiBase: number;
  readonly #routing: MsiRouting;
  readonly #fire: (vector: number) => void;

  /** Bytes of the table for `vectors` entries. */
  static tableBytes(vectors: number): number {
    return vectors * MSIX_ENTRY_BYTES;
  }

  /** Bytes of the PBA for `vectors` entries (whole QWORDs). */
  static pbaBytes(vectors: number): number {
    return Math.ceil(vectors / 64) * 8;
  }

  /** Allocates the shared table (every vector masked, as at reset) and PBA. */
  static createShared(vectors: number): SharedArrayBuffer {
    const shared = new SharedArrayBuffer(
      M_TABLE + MsixVectors.tableBytes(vectors) + MsixVectors.pbaBytes(vectors),
    );
    const dv = new DataView(shared);
    for (let v = 0; v < vectors; v++) dv.setUint32(M_TABLE + v * 16 + 12, MSIX_VECTOR_MASKED, true);
    return shared;
  }

  constructor(options: MsixVectorsOptions) {
    const n = options.vectors;
    if (!Number.isInteger(n) || n < 1 || n > 2048) {
      throw new RangeError(`Cannot create MSI-X table of ${n} vectors`);
    }
    const want = M_TABLE + MsixVectors.tableBytes(n) + MsixVectors.pbaBytes(n);
    if (!(options.shared instanceof SharedArrayBuffer) || options.shared.byteLength !== want) {
      throw new TypeError("Cannot create MsixVectors: 'shared' must come from MsixVectors.createShared()");
    }
    this.vectors = n;
    this.#lock = new Int32Array(options.shared, M_LOCK, 1);
    this.#table = new Uint8Array(options.shared, M_TABLE, MsixVectors.tableBytes(n));
    this.#tableDv = new DataView(options.shared, M_TABLE, MsixVectors.tableBytes(n));
    this.#pba = new Uint8Array(options.shared, M_TABLE + MsixVectors.tableBytes(n), MsixVectors.pbaBytes(n));
    this.#config = options.config;
    this.#capOffset = options.config.findCapability(PCI_CAP_ID_MSIX);
    if (this.#capOffset < 0) {
      throw new TypeError("Cannot create MsixVectors: the function has no MSI-X capability");
    }
    this.#gsiBase = options.gsiBase;
    this.#routing = options.routing;
    this.#fire = options.fire;
  }

  /** The capability's message control word. */
  get control(): number {
    return this.#config.readU16(this.#capOffset + 2);
  }

  /** MSI-X is enabled by the driver. */
  get enabled(): boolean {
    return (this.control & MSIX_CONTROL_ENABLE) !== 0;
  }

  /** GSI of vector `v`. */
  gsi(v: number): number {
    return this.#gsiBase + v;
  }

  /** Guest read in the table region. */
  readTable(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const o = offset + i;
      data[i] = o < this.#table.length ? Atomics.load(this.#table, o) : 0;
    }
  }

  /** Guest read in the PBA region. */
  readPba(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const o = offset + i;
      data[i] = o < this.#pba.length ? Atomics.load(this.#pba, o) : 0;
    }
  }

  /** Guest write in the table region: updates entries, installs routes, delivers pending on unmask. */
  writeTable(offset: number, data: Uint8Array): void {
    if (offset < 0 || offset >= this.#table.length) return;
    const first = Math.floor(offset / MSIX_ENTRY_BYTES);
    const last = Math.min(this.vectors - 1, Math.floor((offset + data.length - 1) / MSIX_ENTRY_BYTES));
    const fire: number[] = [];
    let commit = false;
    lockShared(this.#lock, 0);
    try {
      for (let i = 0; i < data.length && offset + i < this.#table.length; i++) {
        this.#table[offset + i] = data[i]!;
      }
      const active = this.#active();
      for (let v = first; v <= last; v++) {
        if (!active || this.#vectorMasked(v)) continue;
        if (this.#install(v)) commit = true;
        if (this.#takePending(v)) fire.push(v);
      }
    } finally {
      unlockShared(this.#lock, 0);
    }
    if (commit) this.#routing.commit();
    for (const v of fire) this.#fire(v);
  }

  /** Call after a config write that may have touched the capability (enable / function mask). */
  controlChanged(): void {
    const fire: number[] = [];
    let commit = false;
    lockShared(this.#lock, 0);
    try {
      if (this.#active()) {
        for (let v = 0; v < this.vectors; v++) {
          if (this.#vectorMasked(v)) continue;
          if (this.#install(v)) commit = true;
          if (this.#takePending(v)) fire.push(v);
        }
      }
    } finally {
      unlockShared(this.#lock, 0);
    }
    if (commit) this.#routing.commit();
    for (const v of fire) this.#fire(v);
  }

  /**
   * Raises vector `v`: delivered now, or remembered in the PBA while masked.
   * @returns "disabled" when MSI-X is off (the caller falls back to INTx)
   */
  signal(v: number): MsixSignal {
    if (!this.enabled) return "disabled";
    if (v < 0 || v >= this.vectors) return "pending";
    lockShared(this.#lock, 0);
    let deliver = false;
    try {
      if (this.control & MSIX_CONTROL_MASKALL || this.#vectorMasked(v)) {
        this.#pba[v >> 3] = this.#pba[v >> 3]! | (1 << (v & 7));
      } else deliver = true;
    } finally {
      unlockShared(this.#lock, 0);
    }
    if (!deliver) return "pending";
    this.#fire(v);
    return "delivered";
  }

  /** Installs every vector's route and commits once (after restore). */
  syncRoutes(): void {
    lockShared(this.#lock, 0);
    try {
      for (let v = 0; v < this.vectors; v++) this.#install(v);
    } finally {
      unlockShared(this.#lock, 0);
    }
    this.#routing.commit();
  }

  /** Table and PBA bytes, for migration. */
  save(): { table: Uint8Array; pba: Uint8Array } {
    lockShared(this.#lock, 0);
    try {
      return { table: this.#table.slice(), pba: this.#pba.slice() };
    } finally {
      unlockShared(this.#lock, 0);
    }
  }

  /** Applies checked table/PBA bytes (lengths already validated), then {@linkcode syncRoutes}. */
  restore(table: Uint8Array, pba: Uint8Array): void {
    lockShared(this.#lock, 0);
    try {
      this.#table.set(table);
      this.#pba.set(pba);
    } finally {
      unlockShared(this.#lock, 0);
    }
    this.syncRoutes();
  }

  /** Every vector masked, no pending bits (function reset). */
  reset(): void {
    lockShared(this.#lock, 0);
    try {
      this.#table.fill(0);
      for (let v = 0; v < this.vectors; v++) this.#tableDv.setUint32(v * 16 + 12, MSIX_VECTOR_MASKED, true);
      this.#pba.fill(0);
    } finally {
      unlockShared(this.#lock, 0);
    }
  }

  #active(): boolean {
    const c = this.control;
    return (c & MSIX_CONTROL_ENABLE) !== 0 && (c & MSIX_CONTROL_MASKALL) === 0;
  }

  #vectorMasked(v: number): boolean {
    return (this.#tableDv.getUint32(v * 16 + 12, true) & MSIX_VECTOR_MASKED) !== 0;
  }

  #install(v: number): boolean {
    const dv = this.#tableDv;
    return this.#routing.set(
      this.gsi(v),
      dv.getUint32(v * 16, true),
      dv.getUint32(v * 16 + 4, true),
      dv.getUint32(v * 16 + 8, true),
    );
  }

  #takePending(v: number): boolean {
    const bit = 1 << (v & 7);
    const b = this.#pba[v >> 3]!;
    if (!(b & bit)) return false;
    this.#pba[v >> 3] = b & ~bit;
    return true;
  }
}
