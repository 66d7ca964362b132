/**
 * The q35 (ICH9) ACPI power-management I/O block at 0x600 (0x80 ports, as QEMU's ich9-pm):
 *
 * | offset | register | notes |
 * |---|---|---|
 * | 0x00 | PM1a_STS (16) | write 1 to clear |
 * | 0x02 | PM1a_EN (16) | |
 * | 0x04 | PM1a_CNT (16) | SLP_EN (bit 13) with SLP_TYP (bits 10..12) = the S5 type (0, as QEMU's q35 DSDT) requests poweroff |
 * | 0x08 | PM_TMR (32) | 24-bit counter at 3.579545 MHz from a monotonic clock |
 * | 0x20 | GPE0_STS (8 bytes), GPE0_EN (8 bytes) | status is write 1 to clear |
 *
 * SCI_EN (PM1a_CNT bit 0) starts set: the machine runs in ACPI mode from power-on, so the FADT should
 * give SMI_CMD = 0. The SCI (`irq`, IRQ 9 on q35) is high while SCI_EN is set and any enabled PM1 or GPE0
 * status bit is set; {@linkcode AcpiPm.pressPowerButton} sets PWRBTN_STS (what `system_powerdown` does).
 * TMR_STS (timer carry) is not modelled. Other offsets read 0.
 * @module
 */
import type { BusDevice, Migratable, StateValue } from "../device.ts";
import { logger } from "../../util/log.ts";
import { lockShared, unlockShared } from "../shared_lock.ts";
import {
  ACPI_PM_STATE_MIN_VERSION,
  ACPI_PM_STATE_VERSION,
  type AcpiPmState,
  GPE0_BYTES,
  parseAcpiPmState,
} from "./acpi_pm_state.ts";
import type { PlatformRequest } from "./reset.ts";

/** Base port of the block on q35. */
export const ACPI_PM_BASE = 0x600;
/** Length of the block in ports. */
export const ACPI_PM_LENGTH = 0x80;
/** Register offsets. */
export const PM1_STS = 0x00, PM1_EN = 0x02, PM1_CNT = 0x04, PM_TMR = 0x08, GPE0_BLK = 0x20;
/** PM timer frequency. */
export const PM_TIMER_HZ = 3_579_545;
/** PM1 status/enable bits. */
export const PM1_TMR = 0x0001, PM1_GBL = 0x0020, PM1_PWRBTN = 0x0100, PM1_SLPBTN = 0x0200, PM1_RTC = 0x0400;
export const PM1_WAK_STS = 0x8000;
/** PM1a_CNT bits. */
export const PM1_CNT_SCI_EN = 0x0001, PM1_CNT_SLP_EN = 0x2000;

const PM1_EVENTS = PM1_TMR | PM1_GBL | PM1_PWRBTN | PM1_SLPBTN | PM1_RTC;
const TICKS_PER_MS = PM_TIMER_HZ / 1000;

// Layout: 8 Int32 words, then Float64 [origin ms, tick offset] (written only at creation and on restore,
// while the VM is paused), then the GPE0 bytes.
const W_LOCK = 0, W_STS = 1, W_EN = 2, W_CNT = 3, W_SCI = 4;
const WORDS = 8;
const F64_OFFSET = WORDS * 4;
const GPE_BYTE_OFFSET = F64_OFFSET + 16;
const SHARED_BYTES = GPE_BYTE_OFFSET + GPE0_BYTES;

/** A monotonic millisecond clock that reads the same in every thread. */
function defaultClock(): number {
  return performance.timeOrigin + performance.now();
}

/** Options for {@linkcode AcpiPm.createShared}. */
export interface AcpiPmSharedOptions {
  /**
   * The clock the PM timer counts from; pass the same one to every {@linkcode AcpiPm}.
   * @default `performance.timeOrigin + performance.now()`
   */
  clock?: () => number;
}

/** Options for {@linkcode AcpiPm}. */
export interface AcpiPmOptions {
  /** From {@linkcode AcpiPm.createShared}; the same buffer in every thread. */
  shared: SharedArrayBuffer;
  /** Called with `"poweroff"` when the guest enters S5. */
  onRequest: (request: PlatformRequest) => void;
  /**
   * Sets the SCI line. Called only on a change, with the device lock held.
   * @default a no-op
   */
  irq?: (level: boolean) => void;
  /**
   * Monotonic milliseconds, comparable across threads (tests inject a fake).
   * @default `performance.timeOrigin + performance.now()`
   */
  clock?: () => number;
  /**
   * The SLP_TYP value the DSDT's `_S5` package gives.
   * @default 0
   */
  s5SleepType?: number;
  /**
   * Stable id for migration and messages.
   * @default "acpi-pm"
   */
  id?: string;
}

function noIrq(_level: boolean): void {}

/** The ICH9 ACPI PM block; see the module doc. */
export class AcpiPm implements BusDevice, Migratable {
  readonly id: string;
  readonly stateVersion: number = ACPI_PM_STATE_VERSION;
  readonly minStateVersion: number = ACPI_PM_STATE_MIN_VERSION;
  readonly #w: Int32Array;
  /** [origin ms, tick offset]. */
  readonly #f: Float64Array;
  readonly #gpe: Uint8Array;
  readonly #onRequest: (request: PlatformRequest) => void;
  readonly #irq: (level: boolean) => void;
  readonly #clock: () => number;
  readonly #s5: number;
  readonly #log;

  /** Allocates the shared registers (SCI_EN set, timer at 0 from now). */
  static createShared(options: AcpiPmSharedOptions = {}): SharedArrayBuffer {
    const shared = new SharedArrayBuffer(SHARED_BYTES);
    const w = new Int32Array(shared, 0, WORDS);
    w[W_CNT] = PM1_CNT_SCI_EN;
    new Float64Array(shared, F64_OFFSET, 2)[0] = (options.clock ?? defaultClock)();
    return shared;
  }

  /** Builds this thread's view of the block in `options.shared`. */
  constructor(options: AcpiPmOptions) {
    if (!(options.shared instanceof SharedArrayBuffer) || options.shared.byteLength !== SHARED_BYTES) {
      throw new TypeError("Cannot create AcpiPm: 'shared' must come from AcpiPm.createShared()");
    }
    this.id = options.id ?? "acpi-pm";
    this.#w = new Int32Array(options.shared, 0, WORDS);
    this.#f = new Float64Array(options.shared, F64_OFFSET, 2);
    this.#gpe = new Uint8Array(options.shared, GPE_BYTE_OFFSET, GPE0_BYTES);
    this.#onRequest = options.onRequest;
    this.#irq = options.irq ?? noIrq;
    this.#clock = options.clock ?? defaultClock;
    this.#s5 = options.s5SleepType ?? 0;
    this.#log = logger(this.id);
  }

  /** The PM timer's current 24-bit value. */
  timer(): number {
    const ticks = Math.floor((this.#clock() - this.#f[0]!) * TICKS_PER_MS) + this.#f[1]!;
    return ((ticks % 0x1000000) + 0x1000000) % 0x1000000;
  }

  read(offset: number, data: Uint8Array): void {
    const w = this.#w;
    const timer = offset + data.length > PM_TMR && offset < PM_TMR + 4 ? this.timer() : 0;
    lockShared(w, W_LOCK);
    try {
      for (let i = 0; i < data.length; i++) {
        const o = offset + i;
        let v = 0;
        if (o < PM1_EN) v = w[W_STS]! >> (8 * (o - PM1_STS));
        else if (o < PM1_CNT) v = w[W_EN]! >> (8 * (o - PM1_EN));
        else if (o < PM1_CNT + 2) v = w[W_CNT]! >> (8 * (o - PM1_CNT));
        else if (o >= PM_TMR && o < PM_TMR + 4) v = timer >> (8 * (o - PM_TMR));
        else if (o >= GPE0_BLK && o < GPE0_BLK + GPE0_BYTES) v = this.#gpe[o - GPE0_BLK]!;
        data[i] = v & 0xff;
      }
    } finally {
      unlockShared(w, W_LOCK);
    }
  }

  write(offset: number, data: Uint8Array): void {
    const w = this.#w;
    let sleepType = -1;
    lockShared(w, W_LOCK);
    try {
      for (let i = 0; i < data.length; i++) {
        const o = offset + i, v = data[i]!;
        if (o < PM1_EN) {
          w[W_STS] = w[W_STS]! & ~(v << (8 * (o - PM1_STS)));
        } else if (o < PM1_CNT) {
          const shift = 8 * (o - PM1_EN);
          w[W_EN] = ((w[W_EN]! & ~(0xff << shift)) | (v << shift)) & PM1_EVENTS;
        } else if (o < PM1_CNT + 2) {
          const shift = 8 * (o - PM1_CNT);
          const cnt = (w[W_CNT]! & ~(0xff << shift)) | (v << shift);
          if (cnt & PM1_CNT_SLP_EN) sleepType = (cnt >> 10) & 7;
          w[W_CNT] = cnt & ~PM1_CNT_SLP_EN;
        } else if (o >= GPE0_BLK && o < GPE0_BLK + GPE0_BYTES / 2) {
          this.#gpe[o - GPE0_BLK] = this.#gpe[o - GPE0_BLK]! & ~v;
        } else if (o >= GPE0_BLK + GPE0_BYTES / 2 && o < GPE0_BLK + GPE0_BYTES) {
          this.#gpe[o - GPE0_BLK] = v;
        }
      }
      this.#updateSci();
    } finally {
      unlockShared(w, W_LOCK);
    }
    if (sleepType === this.#s5) this.#onRequest("poweroff");
    else if (sleepType >= 0) {
      this.#log.warnLimited("Guest asked for sleep type %d: only S5 (%d) is supported", sleepType, this.#s5);
    }
  }

  /** Presses the ACPI fixed power button: sets PWRBTN_STS and raises the SCI if the guest enabled it. */
  pressPowerButton(): void {
    this.#setStatus(() => {
      this.#w[W_STS] = this.#w[W_STS]! | PM1_PWRBTN;
    });
  }

  /** Sets status bit `bit` (0..63) of GPE0, e.g. for hotplug, and raises the SCI if it is enabled. */
  raiseGpe(bit: number): void {
    if (!Number.isInteger(bit) || bit < 0 || bit >= GPE0_BYTES * 4) {
      throw new RangeError(`Cannot raise GPE ${bit}: must be an integer 0..${GPE0_BYTES * 4 - 1}`);
    }
    this.#setStatus(() => {
      this.#gpe[bit >> 3] = this.#gpe[bit >> 3]! | (1 << (bit & 7));
    });
  }

  /** Machine reset: PM1 and GPE0 registers to power-on values (SCI_EN set); the timer runs on. */
  reset(): void {
    this.#setStatus(() => {
      this.#w[W_STS] = 0;
      this.#w[W_EN] = 0;
      this.#w[W_CNT] = PM1_CNT_SCI_EN;
      this.#gpe.fill(0);
    });
  }

  save(): StateValue {
    const timer = this.timer();
    const w = this.#w;
    lockShared(w, W_LOCK);
    try {
      const s: AcpiPmState = {
        pm1Status: w[W_STS]!,
        pm1Enable: w[W_EN]!,
        pm1Control: w[W_CNT]!,
        timer,
        gpe0: this.#gpe.slice(),
      };
      return s;
    } finally {
      unlockShared(w, W_LOCK);
    }
  }

  restore(state: StateValue, version: number): void {
    const s = parseAcpiPmState(this.id, state, version);
    const w = this.#w;
    lockShared(w, W_LOCK);
    try {
      w[W_STS] = s.pm1Status;
      w[W_EN] = s.pm1Enable;
      w[W_CNT] = s.pm1Control;
      this.#gpe.set(s.gpe0);
      this.#f[1] = s.timer - Math.floor((this.#clock() - this.#f[0]!) * TICKS_PER_MS);
      this.#updateSci();
    } finally {
      unlockShared(w, W_LOCK);
    }
  }

  #setStatus(set: () => void): void {
    lockShared(this.#w, W_LOCK);
    try {
      set();
      this.#updateSci();
    } finally {
      unlockShared(this.#w, W_LOCK);
    }
  }

  #updateSci(): void {
    const w = this.#w;
    let pending = (w[W_STS]! & w[W_EN]! & PM1_EVENTS) !== 0;
    for (let i = 0; i < GPE0_BYTES / 2 && !pending; i++) {
      pending = (this.#gpe[i]! & this.#gpe[i + GPE0_BYTES / 2]!) !== 0;
    }
    const level = pending && (w[W_CNT]! & PM1_CNT_SCI_EN) !== 0 ? 1 : 0;
    if (w[W_SCI] !== level) {
      w[W_SCI] = level;
      this.#irq(level === 1);
    }
  }
}
