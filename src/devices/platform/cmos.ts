/**
 * The MC146818 RTC and CMOS RAM at ports 0x70 (index; bit 7 masks NMI) and 0x71 (data), 128 bytes.
 *
 * - Time registers (seconds, minutes, hours, weekday, day, month, year, century at 0x32) are computed on
 *   each read from the host's UTC clock plus an offset, in BCD or binary (register B bit 2) and 24- or
 *   12-hour form (register B bit 1). A guest write to a time register, or clearing SET (register B bit 7)
 *   after writing them, moves the offset; while SET is on the time is frozen in RAM, as on the chip.
 * - Register A: UIP (bit 7) is set during the last millisecond of each second; the rest is kept.
 *   Register B: kept (reset 0x02: 24-hour, BCD). Register C: read-to-clear flags, always 0 (no alarm,
 *   periodic or update interrupts are generated: TODO, IRQ 8 is not wired). Register D: 0x80 (valid RAM).
 * - Memory sizes where firmware and Linux look: 0x15/0x16 base KiB (≤ 640), 0x17/0x18 and 0x30/0x31
 *   KiB above 1 MiB (≤ 0xffff), 0x34/0x35 64-KiB units between 16 MiB and 4 GiB, 0x5b..0x5d 64-KiB units
 *   above 4 GiB (as QEMU's pc_cmos_init).
 *
 * State (cmos_state.ts): index, NMI mask, the 128 RAM bytes and the clock offset.
 * @module
 */
import type { BusDevice, Migratable, StateValue } from "../device.ts";
import { logger } from "../../util/log.ts";
import { lockShared, unlockShared } from "../shared_lock.ts";
import {
  CMOS_MAX_OFFSET_MS,
  CMOS_RAM_BYTES,
  CMOS_STATE_MIN_VERSION,
  CMOS_STATE_VERSION,
  type CmosState,
  parseCmosState,
} from "./cmos_state.ts";

/** Index and data ports. */
export const CMOS_INDEX_PORT = 0x70, CMOS_DATA_PORT = 0x71;
/** Register indexes. */
export const RTC_SECONDS = 0x00, RTC_MINUTES = 0x02, RTC_HOURS = 0x04, RTC_WEEKDAY = 0x06;
export const RTC_DAY = 0x07, RTC_MONTH = 0x08, RTC_YEAR = 0x09, RTC_CENTURY = 0x32;
export const RTC_REG_A = 0x0a, RTC_REG_B = 0x0b, RTC_REG_C = 0x0c, RTC_REG_D = 0x0d;
/** Register bits. */
export const REG_A_UIP = 0x80, REG_B_SET = 0x80, REG_B_UIE = 0x10, REG_B_DM_BINARY = 0x04, REG_B_24H = 0x02;
export const REG_D_VRT = 0x80;

const TIME_REGS = [
  RTC_SECONDS,
  RTC_MINUTES,
  RTC_HOURS,
  RTC_WEEKDAY,
  RTC_DAY,
  RTC_MONTH,
  RTC_YEAR,
  RTC_CENTURY,
];
const KIB = 1024, MIB = 1024 * KIB;

// Layout: Int32 [lock, index, nmi], Float64 offset at byte 16, RAM at byte 32.
const W_LOCK = 0, W_INDEX = 1, W_NMI = 2;
const F64_OFFSET = 16, RAM_OFFSET = 32;
const SHARED_BYTES = RAM_OFFSET + CMOS_RAM_BYTES;

/** Options for {@linkcode Cmos.createShared}: the RAM sizes reported to firmware and Linux. */
export interface CmosSharedOptions {
  /**
   * Guest RAM below 4 GiB, in bytes.
   * @default 0
   */
  lowMemBytes?: number;
  /**
   * Guest RAM above 4 GiB, in bytes.
   * @default 0
   */
  highMemBytes?: number;
}

/** Options for {@linkcode Cmos}. */
export interface CmosOptions {
  /** From {@linkcode Cmos.createShared}; the same buffer in every thread. */
  shared: SharedArrayBuffer;
  /**
   * Host UTC in ms since the epoch (tests inject a fake).
   * @default Date.now
   */
  now?: () => number;
  /**
   * Stable id for migration and messages.
   * @default "rtc-cmos"
   */
  id?: string;
}

function toBcd(v: number): number {
  return ((v / 10) | 0) << 4 | v % 10;
}

function fromBcd(v: number): number {
  const hi = v >> 4, lo = v & 0x0f;
  return hi > 9 || lo > 9 ? Number.NaN : hi * 10 + lo;
}

/** The RTC/CMOS; see the module doc. */
export class Cmos implements BusDevice, Migratable {
  readonly id: string;
  readonly stateVersion: number = CMOS_STATE_VERSION;
  readonly minStateVersion: number = CMOS_STATE_MIN_VERSION;
  readonly #w: Int32Array;
  readonly #offset: Float64Array;
  readonly #ram: Uint8Array;
  readonly #now: () => number;
  readonly #log;

  /** Allocates the shared RAM with status registers at reset values and the memory size bytes filled in. */
  static createShared(options: CmosSharedOptions = {}): SharedArrayBuffer {
    const low = options.lowMemBytes ?? 0, high = options.highMemBytes ?? 0;
    for (const [name, v] of [["lowMemBytes", low], ["highMemBytes", high]] as const) {
      if (!Number.isSafeInteger(v) || v < 0) {
        throw new RangeError(`Cannot create Cmos: '${name}' must be a byte count, got ${v}`);
      }
    }
    const shared = new SharedArrayBuffer(SHARED_BYTES);
    const ram = new Uint8Array(shared, RAM_OFFSET, CMOS_RAM_BYTES);
    ram[RTC_REG_A] = 0x26;
    ram[RTC_REG_B] = REG_B_24H;
    ram[RTC_REG_D] = REG_D_VRT;
    const put = (index: number, bytes: number, v: number) => {
      for (let i = 0; i < bytes; i++) ram[index + i] = (v >> (8 * i)) & 0xff;
    };
    put(0x15, 2, Math.min(low / KIB, 640));
    const ext = Math.min(Math.max(low - MIB, 0) / KIB, 0xffff);
    put(0x17, 2, ext);
    put(0x30, 2, ext);
    put(0x34, 2, Math.min(Math.max(low - 16 * MIB, 0) / (64 * KIB), 0xffff));
    put(0x5b, 3, Math.min(Math.floor(high / (64 * KIB)), 0xffffff));
    return shared;
  }

  /** Builds this thread's view of the RTC in `options.shared`. */
  constructor(options: CmosOptions) {
    if (!(options.shared instanceof SharedArrayBuffer) || options.shared.byteLength !== SHARED_BYTES) {
      throw new TypeError("Cannot create Cmos: 'shared' must come from Cmos.createShared()");
    }
    this.id = options.id ?? "rtc-cmos";
    this.#w = new Int32Array(options.shared, 0, 4);
    this.#offset = new Float64Array(options.shared, F64_OFFSET, 1);
    this.#ram = new Uint8Array(options.shared, RAM_OFFSET, CMOS_RAM_BYTES);
    this.#now = options.now ?? Date.now;
    this.#log = logger(this.id);
  }

  /** Port 0 (0x70) reads 0xff (write-only on the chip); port 1 (0x71) reads the selected register. */
  read(offset: number, data: Uint8Array): void {
    lockShared(this.#w, W_LOCK);
    try {
      for (let i = 0; i < data.length; i++) {
        data[i] = offset + i === 1 ? this.#readReg(this.#w[W_INDEX]!) : 0xff;
      }
    } finally {
      unlockShared(this.#w, W_LOCK);
    }
  }

  /** Port 0 selects a register (bit 7 masks NMI); port 1 writes it. `outw 0x70` does both. */
  write(offset: number, data: Uint8Array): void {
    lockShared(this.#w, W_LOCK);
    try {
      for (let i = 0; i < data.length; i++) {
        const v = data[i]!;
        if (offset + i === 0) {
          this.#w[W_INDEX] = v & 0x7f;
          this.#w[W_NMI] = v >> 7;
        } else if (offset + i === 1) {
          this.#writeReg(this.#w[W_INDEX]!, v);
        }
      }
    } finally {
      unlockShared(this.#w, W_LOCK);
    }
  }

  /** Whether the guest has masked NMIs through bit 7 of the index port. */
  get nmiDisabled(): boolean {
    return Atomics.load(this.#w, W_NMI) === 1;
  }

  save(): StateValue {
    lockShared(this.#w, W_LOCK);
    try {
      const s: CmosState = {
        index: this.#w[W_INDEX]!,
        nmiDisabled: this.#w[W_NMI] === 1,
        ram: this.#ram.slice(),
        offsetMs: this.#offset[0]!,
      };
      return s;
    } finally {
      unlockShared(this.#w, W_LOCK);
    }
  }

  restore(state: StateValue, version: number): void {
    const s = parseCmosState(this.id, state, version);
    lockShared(this.#w, W_LOCK);
    try {
      this.#w[W_INDEX] = s.index;
      this.#w[W_NMI] = s.nmiDisabled ? 1 : 0;
      this.#ram.set(s.ram);
      this.#offset[0] = s.offsetMs;
    } finally {
      unlockShared(this.#w, W_LOCK);
    }
  }

  // ---- with the lock held ----

  #readReg(index: number): number {
    const ram = this.#ram;
    const set = (ram[RTC_REG_B]! & REG_B_SET) !== 0;
    switch (index) {
      case RTC_REG_A: {
        const ms = ((this.#now() % 1000) + 1000) % 1000;
        return (ram[RTC_REG_A]! & 0x7f) | (!set && ms >= 999 ? REG_A_UIP : 0);
      }
      case RTC_REG_C: {
        const v = ram[RTC_REG_C]!;
        ram[RTC_REG_C] = 0;
        return v;
      }
      case RTC_REG_D:
        return REG_D_VRT;
      default:
        if (!set && TIME_REGS.includes(index)) return this.#timeReg(index, this.#now() + this.#offset[0]!);
        return ram[index]!;
    }
  }

  #writeReg(index: number, v: number): void {
    const ram = this.#ram;
    switch (index) {
      case RTC_REG_A:
        ram[index] = v & 0x7f;
        return;
      case RTC_REG_B: {
        const old = ram[index]!;
        if (v & REG_B_SET && !(old & REG_B_SET)) this.#latchTime(); // freeze: the time now sits in RAM
        ram[index] = v & REG_B_SET ? v & ~REG_B_UIE : v;
        if (old & REG_B_SET && !(v & REG_B_SET)) this.#takeTimeFromRam(); // run from what the guest wrote
        return;
      }
      case RTC_REG_C:
      case RTC_REG_D:
        return; // read-only
      default:
        if (TIME_REGS.includes(index) && !(ram[RTC_REG_B]! & REG_B_SET)) {
          this.#latchTime();
          ram[index] = v;
          this.#takeTimeFromRam();
        } else {
          ram[index] = v;
        }
    }
  }

  #encode(v: number): number {
    return this.#ram[RTC_REG_B]! & REG_B_DM_BINARY ? v : toBcd(v);
  }

  #decode(v: number): number {
    return this.#ram[RTC_REG_B]! & REG_B_DM_BINARY ? v : fromBcd(v);
  }

  #timeReg(index: number, ms: number): number {
    const d = new Date(ms);
    switch (index) {
      case RTC_SECONDS:
        return this.#encode(d.getUTCSeconds());
      case RTC_MINUTES:
        return this.#encode(d.getUTCMinutes());
      case RTC_HOURS: {
        const h = d.getUTCHours();
        if (this.#ram[RTC_REG_B]! & REG_B_24H) return this.#encode(h);
        return this.#encode(h % 12 || 12) | (h >= 12 ? 0x80 : 0);
      }
      case RTC_WEEKDAY:
        return this.#encode(d.getUTCDay() + 1);
      case RTC_DAY:
        return this.#encode(d.getUTCDate());
      case RTC_MONTH:
        return this.#encode(d.getUTCMonth() + 1);
      case RTC_YEAR:
        return this.#encode(d.getUTCFullYear() % 100);
      default:
        return this.#encode(Math.floor(d.getUTCFullYear() / 100));
    }
  }

  #latchTime(): void {
    const ms = this.#now() + this.#offset[0]!;
    for (const r of TIME_REGS) this.#ram[r] = this.#timeReg(r, ms);
  }

  /** Sets the offset so the clock reads the time now in RAM, keeping the host's sub-second phase. */
  #takeTimeFromRam(): void {
    const ram = this.#ram;
    const hourByte = ram[RTC_HOURS]!;
    const twelveHour = !(ram[RTC_REG_B]! & REG_B_24H);
    let hour = this.#decode(twelveHour ? hourByte & 0x7f : hourByte);
    if (twelveHour) hour = (hour % 12) + (hourByte & 0x80 ? 12 : 0);
    const month = this.#decode(ram[RTC_MONTH]!), day = this.#decode(ram[RTC_DAY]!);
    const d = new Date(0);
    d.setUTCFullYear(this.#decode(ram[RTC_CENTURY]!) * 100 + this.#decode(ram[RTC_YEAR]!), month - 1, day);
    d.setUTCHours(hour, this.#decode(ram[RTC_MINUTES]!), this.#decode(ram[RTC_SECONDS]!));
    const t = d.getTime();
    const now = this.#now();
    const offset = t - (now - (((now % 1000) + 1000) % 1000));
    if (
      !Number.isFinite(offset) || Math.abs(offset) > CMOS_MAX_OFFSET_MS || month < 1 || month > 12 || day < 1
    ) {
      this.#log.warnLimited(
        "Guest set an invalid RTC time (%s); keeping the clock",
        [...ram.subarray(0, 10)].join(","),
      );
      return;
    }
    this.#offset[0] = offset;
  }
}
