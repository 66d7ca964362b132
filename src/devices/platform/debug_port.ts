/**
 * Port 0x80, the POST code port: firmware and boot code write progress bytes here, and Linux uses it
 * as an I/O delay. The device remembers the last byte (reads return it) and logs changes at debug level.
 * State: the last code (debug_port_state.ts).
 * @module
 */
import type { BusDevice, Migratable, StateValue } from "../device.ts";
import { logger } from "../../util/log.ts";
import {
  DEBUG_PORT_STATE_MIN_VERSION,
  DEBUG_PORT_STATE_VERSION,
  parseDebugPortState,
} from "./debug_port_state.ts";

/** The POST code port. */
export const DEBUG_PORT = 0x80;

/** Options for {@linkcode DebugPort}. */
export interface DebugPortOptions {
  /** From {@linkcode DebugPort.createShared}; the same buffer in every thread. */
  shared: SharedArrayBuffer;
  /** Called with each byte that differs from the previous one. */
  onCode?: (code: number) => void;
  /**
   * Stable id for migration and messages.
   * @default "debug-port"
   */
  id?: string;
}

/** The POST code sink at 0x80 (1 port). */
export class DebugPort implements BusDevice, Migratable {
  readonly id: string;
  readonly stateVersion: number = DEBUG_PORT_STATE_VERSION;
  readonly minStateVersion: number = DEBUG_PORT_STATE_MIN_VERSION;
  readonly #w: Int32Array;
  readonly #onCode: ((code: number) => void) | undefined;
  readonly #log;

  /** Allocates the shared last-code word. */
  static createShared(): SharedArrayBuffer {
    return new SharedArrayBuffer(4);
  }

  /** Builds this thread's view of the port in `options.shared`. */
  constructor(options: DebugPortOptions) {
    if (!(options.shared instanceof SharedArrayBuffer) || options.shared.byteLength !== 4) {
      throw new TypeError("Cannot create DebugPort: 'shared' must come from DebugPort.createShared()");
    }
    this.id = options.id ?? "debug-port";
    this.#w = new Int32Array(options.shared);
    this.#onCode = options.onCode;
    this.#log = logger(this.id);
  }

  /** The last byte written. */
  get lastCode(): number {
    return Atomics.load(this.#w, 0);
  }

  read(_offset: number, data: Uint8Array): void {
    data.fill(Atomics.load(this.#w, 0));
  }

  write(_offset: number, data: Uint8Array): void {
    const v = data[0];
    if (v === undefined) return;
    if (Atomics.exchange(this.#w, 0, v) !== v) {
      this.#log.debug("POST code 0x%s", v.toString(16).padStart(2, "0"));
      this.#onCode?.(v);
    }
  }

  save(): StateValue {
    return { lastCode: Atomics.load(this.#w, 0) };
  }

  restore(state: StateValue, version: number): void {
    Atomics.store(this.#w, 0, parseDebugPortState(this.id, state, version).lastCode);
  }
}
