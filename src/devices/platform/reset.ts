/**
 * The two ways a PC guest asks for a reset through port I/O:
 * - {@linkcode ResetControl}, the ICH9 reset control register at 0xcf9: a write with RST_CPU (bit 2) set,
 *   e.g. 0x06 or 0x0e as Linux writes, requests a reset; SYS_RST/FULL_RST (bits 1, 3) are kept and read
 *   back (as QEMU's ich9 LPC).
 * - {@linkcode I8042}, a stub of the keyboard controller's command/status port 0x64: command 0xfe
 *   (pulse the reset line) requests a reset; its status reads say "no data, input buffer empty".
 *
 * Requests go to the `onRequest` callback; the machine decides what a reset means.
 * State: ResetControl's latched bits (reset_state.ts); I8042 has none.
 * @module
 */
import type { BusDevice, Migratable, StateValue } from "../device.ts";
import {
  parseResetState,
  RCR_KEPT_BITS,
  RESET_STATE_MIN_VERSION,
  RESET_STATE_VERSION,
} from "./reset_state.ts";

/** What a platform device may ask of the machine. */
export type PlatformRequest = "reset" | "poweroff";

/** Reset control register port. */
export const RESET_CONTROL_PORT = 0xcf9;
/** i8042 command/status port. */
export const I8042_COMMAND_PORT = 0x64;
/** RST_CPU: a write with this bit set resets the machine. */
export const RCR_RST_CPU = 0x04;
/** i8042 command that pulses the CPU reset line. */
export const I8042_CMD_RESET = 0xfe;
/** i8042 status: system flag (self-test passed) and keyboard not inhibited; OBF and IBF clear. */
export const I8042_STATUS_IDLE = 0x14;

/** Options for {@linkcode ResetControl}. */
export interface ResetControlOptions {
  /** From {@linkcode ResetControl.createShared}; the same buffer in every thread. */
  shared: SharedArrayBuffer;
  /** Called (with `"reset"`) when the guest requests a reset. */
  onRequest: (request: PlatformRequest) => void;
  /**
   * Stable id for migration and messages.
   * @default "reset-control"
   */
  id?: string;
}

/** The reset control register at 0xcf9 (1 port). */
export class ResetControl implements BusDevice, Migratable {
  readonly id: string;
  readonly stateVersion: number = RESET_STATE_VERSION;
  readonly minStateVersion: number = RESET_STATE_MIN_VERSION;
  readonly #w: Int32Array;
  readonly #onRequest: (request: PlatformRequest) => void;

  /** Allocates the shared register (reset value 0). */
  static createShared(): SharedArrayBuffer {
    return new SharedArrayBuffer(4);
  }

  /** Builds this thread's view of the register in `options.shared`. */
  constructor(options: ResetControlOptions) {
    if (!(options.shared instanceof SharedArrayBuffer) || options.shared.byteLength !== 4) {
      throw new TypeError("Cannot create ResetControl: 'shared' must come from ResetControl.createShared()");
    }
    this.id = options.id ?? "reset-control";
    this.#w = new Int32Array(options.shared);
    this.#onRequest = options.onRequest;
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0xff);
    if (offset === 0 && data.length > 0) data[0] = Atomics.load(this.#w, 0);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset !== 0 || data.length === 0) return;
    const v = data[0]!;
    if (v & RCR_RST_CPU) {
      this.#onRequest("reset");
      return;
    }
    Atomics.store(this.#w, 0, v & RCR_KEPT_BITS);
  }

  /** Returns the register to its power-on value. */
  reset(): void {
    Atomics.store(this.#w, 0, 0);
  }

  save(): StateValue {
    return { rcr: Atomics.load(this.#w, 0) };
  }

  restore(state: StateValue, version: number): void {
    const s = parseResetState(this.id, state, version);
    Atomics.store(this.#w, 0, s.rcr);
  }
}

/** Options for {@linkcode I8042}. */
export interface I8042Options {
  /** Called (with `"reset"`) when the guest sends command 0xfe. */
  onRequest: (request: PlatformRequest) => void;
}

/**
 * Just enough of an i8042 at port 0x64 (1 port) to reboot: command 0xfe requests a reset; other commands
 * are ignored; status reads return {@linkcode I8042_STATUS_IDLE}. Stateless, so one object per thread
 * needs no shared buffer. There is no keyboard: Linux's i8042 probe times out and moves on.
 */
export class I8042 implements BusDevice {
  readonly #onRequest: (request: PlatformRequest) => void;

  constructor(options: I8042Options) {
    this.#onRequest = options.onRequest;
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0xff);
    if (offset === 0 && data.length > 0) data[0] = I8042_STATUS_IDLE;
  }

  write(offset: number, data: Uint8Array): void {
    if (offset === 0 && data[0] === I8042_CMD_RESET) this.#onRequest("reset");
  }
}
