/**
 * Address-range → {@linkcode BusDevice} dispatch for port I/O and MMIO exits. Each vCPU Worker builds
 * its own buses over its own device objects (which share registers through SharedArrayBuffers), so a
 * bus is plain single-thread data.
 *
 * - {@linkcode PioBus}: a direct 64 Ki table, one `Uint16Array` load per access.
 * - {@linkcode MmioBus}: ranges sorted by base, binary search (a handful of ranges in practice).
 *
 * An access nobody claims reads as all-ones and a write to it is dropped, like an ISA/PCI master
 * abort; both are logged at debug level, rate-limited (a guest can cause them at will).
 *
 * @example
 * ```ts
 * const pio = new PioBus();
 * pio.register(0x3f8, 8, uart, "serial:ttyS0");
 * pio.write(0x3f8, Uint8Array.of(0x41)); // → uart.write(0, …)
 * ```
 * @module
 */
import type { BusDevice } from "../devices/device.ts";
import { logger } from "../util/log.ts";

/** One claimed range, as listed by {@linkcode PioBus.ranges} / {@linkcode MmioBus.ranges}. */
export interface BusRange {
  base: number;
  length: number;
  device: BusDevice;
  id: string;
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function describe(r: { base: number; length: number; id: string }): string {
  return `'${r.id}' at ${hex(r.base)}..${hex(r.base + r.length - 1)}`;
}

/** Logs unclaimed accesses at debug level: at most 10 lines per 5 s, then one count. */
class UnclaimedLog {
  readonly #log;
  readonly #kind: string;
  #windowStart = 0;
  #count = 0;

  constructor(kind: string) {
    this.#kind = kind;
    this.#log = logger(kind === "PIO" ? "bus:pio" : "bus:mmio");
  }

  note(op: "read" | "write", addr: number, size: number): void {
    const now = Date.now();
    if (now - this.#windowStart > 5000) {
      if (this.#count > 10) this.#log.debug("%d more unclaimed %s accesses", this.#count - 10, this.#kind);
      this.#windowStart = now;
      this.#count = 0;
    }
    if (++this.#count <= 10) {
      this.#log.debug("Unclaimed %s %s of %d bytes at %s", this.#kind, op, size, hex(addr));
    }
  }
}

function checkRange(kind: string, base: number, length: number, limit: number, id: string): void {
  if (
    !Number.isSafeInteger(base) || !Number.isSafeInteger(length) || base < 0 || length < 1 ||
    base + length > limit
  ) {
    throw new RangeError(
      `Cannot register '${id}' on the ${kind} bus: range ${base}+${length} is outside 0..${hex(limit - 1)}`,
    );
  }
}

/** The x86 port I/O space (64 Ki ports), dispatched through a direct table. */
export class PioBus {
  /** Port → 1 + index into #slots; 0 means unclaimed. */
  readonly #table = new Uint16Array(0x10000);
  readonly #slots: (BusRange | undefined)[] = [];
  readonly #unclaimed = new UnclaimedLog("PIO");

  /**
   * Claims ports `base..base+length-1` for `device`.
   * @param id a stable name used in errors and listings, e.g. `"serial:ttyS0"`
   * @throws {RangeError} when the range leaves the port space or overlaps a claimed range (naming both ids)
   */
  register(base: number, length: number, device: BusDevice, id: string): void {
    checkRange("PIO", base, length, 0x10000, id);
    for (let p = base; p < base + length; p++) {
      const s = this.#table[p]!;
      if (s !== 0) {
        const other = this.#slots[s - 1]!;
        throw new RangeError(
          `Cannot register ${describe({ base, length, id })}: overlaps ${describe(other)}`,
        );
      }
    }
    let slot = this.#slots.indexOf(undefined);
    if (slot < 0) slot = this.#slots.push(undefined) - 1;
    this.#slots[slot] = { base, length, device, id };
    this.#table.fill(slot + 1, base, base + length);
  }

  /**
   * Releases every range registered under `id`.
   * @returns how many ranges were released
   */
  unregister(id: string): number {
    let n = 0;
    this.#slots.forEach((r, i) => {
      if (r?.id !== id) return;
      this.#table.fill(0, r.base, r.base + r.length);
      this.#slots[i] = undefined;
      n++;
    });
    return n;
  }

  /** The claimed ranges, sorted by base. */
  ranges(): BusRange[] {
    return this.#slots.filter((r): r is BusRange => r !== undefined).sort((a, b) => a.base - b.base);
  }

  /** Dispatches an `in` of `data.length` bytes at `port`; unclaimed ports read 0xff. */
  read(port: number, data: Uint8Array): void {
    const s = this.#table[port & 0xffff]!;
    if (s !== 0) {
      const r = this.#slots[s - 1]!;
      r.device.read(port - r.base, data);
      return;
    }
    data.fill(0xff);
    this.#unclaimed.note("read", port, data.length);
  }

  /** Dispatches an `out` of `data` at `port`; unclaimed ports drop it. */
  write(port: number, data: Uint8Array): void {
    const s = this.#table[port & 0xffff]!;
    if (s !== 0) {
      const r = this.#slots[s - 1]!;
      r.device.write(port - r.base, data);
      return;
    }
    this.#unclaimed.note("write", port, data.length);
  }
}

/** Guest-physical MMIO space: ranges sorted by base, found by binary search. */
export class MmioBus {
  readonly #ranges: BusRange[] = [];
  readonly #unclaimed = new UnclaimedLog("MMIO");

  /**
   * Claims guest-physical addresses `base..base+length-1` for `device`.
   * @param id a stable name used in errors and listings
   * @throws {RangeError} when the range is invalid or overlaps a claimed range (naming both ids)
   */
  register(base: number, length: number, device: BusDevice, id: string): void {
    checkRange("MMIO", base, length, 2 ** 52, id);
    const i = this.#upperBound(base);
    const before = this.#ranges[i - 1], after = this.#ranges[i];
    const clash = before && before.base + before.length > base
      ? before
      : after && after.base < base + length
      ? after
      : undefined;
    if (clash) {
      throw new RangeError(`Cannot register ${describe({ base, length, id })}: overlaps ${describe(clash)}`);
    }
    this.#ranges.splice(i, 0, { base, length, device, id });
  }

  /**
   * Releases every range registered under `id`.
   * @returns how many ranges were released
   */
  unregister(id: string): number {
    const before = this.#ranges.length;
    for (let i = this.#ranges.length - 1; i >= 0; i--) {
      if (this.#ranges[i]!.id === id) this.#ranges.splice(i, 1);
    }
    return before - this.#ranges.length;
  }

  /** The claimed ranges, sorted by base. */
  ranges(): BusRange[] {
    return [...this.#ranges];
  }

  /** Dispatches a read of `data.length` bytes at `addr`; unclaimed addresses read 0xff. */
  read(addr: number, data: Uint8Array): void {
    const r = this.#find(addr);
    if (r) {
      r.device.read(addr - r.base, data);
      return;
    }
    data.fill(0xff);
    this.#unclaimed.note("read", addr, data.length);
  }

  /** Dispatches a write of `data` at `addr`; unclaimed addresses drop it. */
  write(addr: number, data: Uint8Array): void {
    const r = this.#find(addr);
    if (r) {
      r.device.write(addr - r.base, data);
      return;
    }
    this.#unclaimed.note("write", addr, data.length);
  }

  /** Index of the first range whose base is > addr. */
  #upperBound(addr: number): number {
    let lo = 0, hi = this.#ranges.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#ranges[mid]!.base <= addr) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  #find(addr: number): BusRange | undefined {
    const r = this.#ranges[this.#upperBound(addr) - 1];
    return r && addr < r.base + r.length ? r : undefined;
  }
}
