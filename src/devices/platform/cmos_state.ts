/**
 * The migratable state of {@linkcode Cmos}: the index register, the NMI mask bit, all 128 RAM bytes
 * (status registers A..D, NVRAM, and the time bytes as last latched) and the guest clock's offset from
 * host UTC. The offset travels as is: source and destination hosts are assumed to agree on UTC.
 * @module
 */
import type { StateValue } from "../device.ts";
import { checkStateVersion, StateReader } from "../state_fields.ts";

/** Version written with the state; bump on any layout change. */
export const CMOS_STATE_VERSION = 1;
/** Oldest version {@linkcode parseCmosState} still reads. */
export const CMOS_STATE_MIN_VERSION = 1;
/** CMOS RAM size (the ISA MC146818 bank). */
export const CMOS_RAM_BYTES = 128;
/** Largest guest clock offset accepted, in ms (about ±4400 years). */
export const CMOS_MAX_OFFSET_MS = 2 ** 47;

/** Plain data. */
export type CmosState = {
  /** Selected register, 0..127. */
  index: number;
  /** NMI disabled (bit 7 of the last index write). */
  nmiDisabled: boolean;
  /** All 128 bytes. */
  ram: Uint8Array;
  /** Guest RTC minus host UTC, in whole seconds expressed as ms. */
  offsetMs: number;
};

/**
 * Validates an untrusted payload into a {@linkcode CmosState}.
 * @throws {TypeError | RangeError} naming the field
 */
export function parseCmosState(id: string, state: StateValue, version: number): CmosState {
  checkStateVersion(id, version, CMOS_STATE_MIN_VERSION, CMOS_STATE_VERSION);
  const r = new StateReader(id, state);
  return {
    index: r.int("index", 0, CMOS_RAM_BYTES - 1),
    nmiDisabled: r.bool("nmiDisabled"),
    ram: r.bytes("ram", CMOS_RAM_BYTES, CMOS_RAM_BYTES),
    offsetMs: r.int("offsetMs", -CMOS_MAX_OFFSET_MS, CMOS_MAX_OFFSET_MS),
  };
}
