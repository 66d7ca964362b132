/**
 * The migratable state of {@linkcode DebugPort}: the last POST code.
 * @module
 */
import type { StateValue } from "../device.ts";
import { checkStateVersion, StateReader } from "../state_fields.ts";

/** Version written with the state; bump on any layout change. */
export const DEBUG_PORT_STATE_VERSION = 1;
/** Oldest version {@linkcode parseDebugPortState} still reads. */
export const DEBUG_PORT_STATE_MIN_VERSION = 1;

/** Plain data. */
export type DebugPortState = {
  /** Last byte written to port 0x80. */
  lastCode: number;
};

/**
 * Validates an untrusted payload into a {@linkcode DebugPortState}.
 * @throws {TypeError | RangeError} naming the field
 */
export function parseDebugPortState(id: string, state: StateValue, version: number): DebugPortState {
  checkStateVersion(id, version, DEBUG_PORT_STATE_MIN_VERSION, DEBUG_PORT_STATE_VERSION);
  const r = new StateReader(id, state);
  return { lastCode: r.int("lastCode", 0, 255) };
}
