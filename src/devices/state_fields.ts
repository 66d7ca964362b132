/**
 * Validation for untrusted device state (STYLE.md c.8, virtio-queue's `TryFrom<QueueState>` rule):
 * every `*_state.ts` reads its fields through a {@linkcode StateReader}, so each rejection names the
 * device and the field, e.g. `Cannot restore serial:ttyS0: field 'lcr' must be an integer 0..255`.
 * @module
 */
import type { StateValue } from "./device.ts";

function show(v: unknown): string {
  if (v instanceof Uint8Array) return `Uint8Array(${v.length})`;
  if (typeof v === "bigint") return `${v}n`;
  if (typeof v === "string") return `'${v}'`;
  if (v === null || typeof v !== "object") return String(v);
  return Array.isArray(v) ? "an array" : "an object";
}

/**
 * Checks a state section's version against what a device can read.
 * @throws {RangeError} when `version` is not an integer in `min..max`
 */
export function checkStateVersion(id: string, version: number, min: number, max: number): void {
  if (!Number.isInteger(version) || version < min || version > max) {
    throw new RangeError(`Cannot restore ${id}: state version ${show(version)} is not in ${min}..${max}`);
  }
}

/** Reads typed fields out of an untrusted state object; every error names the device and the field. */
export class StateReader {
  readonly #id: string;
  readonly #obj: { [key: string]: StateValue };

  /**
   * @param id the device id used in messages, e.g. `"serial:ttyS0"`
   * @param state the untrusted payload
   * @throws {TypeError} when `state` is not a plain object
   */
  constructor(id: string, state: StateValue) {
    if (state === null || typeof state !== "object" || Array.isArray(state) || state instanceof Uint8Array) {
      throw new TypeError(`Cannot restore ${id}: state must be an object, got ${show(state)}`);
    }
    this.#id = id;
    this.#obj = state;
  }

  #fail(field: string, want: string, got: unknown, range: boolean): never {
    const msg = `Cannot restore ${this.#id}: field '${field}' must be ${want} (got ${show(got)})`;
    throw range ? new RangeError(msg) : new TypeError(msg);
  }

  /** An integer in `min..max` (inclusive). */
  int(field: string, min: number, max: number): number {
    const v = this.#obj[field];
    const want = `an integer ${min}..${max}`;
    if (typeof v !== "number" || !Number.isInteger(v)) this.#fail(field, want, v, false);
    if (v < min || v > max) this.#fail(field, want, v, true);
    return v;
  }

  /** A finite number in `min..max` (inclusive). */
  number(field: string, min: number, max: number): number {
    const v = this.#obj[field];
    const want = `a number ${min}..${max}`;
    if (typeof v !== "number" || !Number.isFinite(v)) this.#fail(field, want, v, false);
    if (v < min || v > max) this.#fail(field, want, v, true);
    return v;
  }

  /** A boolean. */
  bool(field: string): boolean {
    const v = this.#obj[field];
    if (typeof v !== "boolean") this.#fail(field, "a boolean", v, false);
    return v;
  }

  /** A list of at most `maxLength` items (each still untrusted). */
  list(field: string, maxLength: number): StateValue[] {
    const v = this.#obj[field];
    const want = `a list of at most ${maxLength} items`;
    if (!Array.isArray(v)) this.#fail(field, want, v, false);
    if (v.length > maxLength) this.#fail(field, want, v, true);
    return v;
  }

  /** A byte string whose length is in `minLength..maxLength`. */
  bytes(field: string, minLength: number, maxLength: number): Uint8Array {
    const v = this.#obj[field];
    const want = minLength === maxLength
      ? `a Uint8Array of ${minLength} bytes`
      : `a Uint8Array of ${minLength}..${maxLength} bytes`;
    if (!(v instanceof Uint8Array)) this.#fail(field, want, v, false);
    if (v.length < minLength || v.length > maxLength) this.#fail(field, want, v, true);
    return v;
  }
}
