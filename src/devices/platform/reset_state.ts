/**
 * The migratable state of {@linkcode ResetControl}: the reset control register's latched bits.
 * @module
 */
import type { StateValue } from "../device.ts";
import { checkStateVersion, StateReader } from "../state_fields.ts";

/** Version written with the state; bump on any layout change. */
export const RESET_STATE_VERSION = 1;
/** Oldest version {@linkcode parseResetState} still reads. */
export const RESET_STATE_MIN_VERSION = 1;
/** The bits 0xcf9 keeps: SYS_RST (bit 1) and FULL_RST (bit 3). */
export const RCR_KEPT_BITS = 0x0a;

/** Plain data. */
export type ResetState = {
  /** Reset control register (0xcf9) as last written, bits 1 and 3 only. */
  rcr: number;
};

/**
 * Validates an untrusted payload into a {@linkcode ResetState}.
 * @throws {TypeError | RangeError} naming the field
 */
export function parseResetState(id: string, state: StateValue, version: number): ResetState {
  checkStateVersion(id, version, RESET_STATE_MIN_VERSION, RESET_STATE_VERSION);
  const r = new StateReader(id, state);
  const rcr = r.int("rcr", 0, 255);
  if (rcr & ~RCR_KEPT_BITS) {
    throw new RangeError(`Cannot restore ${id}: field 'rcr' may only have bits 0x0a set (got ${rcr})`);
  }
  return { rcr };
}
