/**
 * The migratable state of {@linkcode AcpiPm}: PM1 status/enable/control, the PM timer's value at save
 * time (the destination continues counting from it) and the GPE0 block.
 * @module
 */
import type { StateValue } from "../device.ts";
import { checkStateVersion, StateReader } from "../state_fields.ts";

/** Version written with the state; bump on any layout change. */
export const ACPI_PM_STATE_VERSION = 1;
/** Oldest version {@linkcode parseAcpiPmState} still reads. */
export const ACPI_PM_STATE_MIN_VERSION = 1;
/** GPE0 block length in bytes: 8 status bytes then 8 enable bytes (ICH9). */
export const GPE0_BYTES = 16;

/** Plain data. */
export type AcpiPmState = {
  pm1Status: number;
  pm1Enable: number;
  /** PM1a_CNT without SLP_EN (write-only). */
  pm1Control: number;
  /** PM timer (24 bits) when saved. */
  timer: number;
  /** GPE0 status bytes then enable bytes. */
  gpe0: Uint8Array;
};

/**
 * Validates an untrusted payload into an {@linkcode AcpiPmState}.
 * @throws {TypeError | RangeError} naming the field
 */
export function parseAcpiPmState(id: string, state: StateValue, version: number): AcpiPmState {
  checkStateVersion(id, version, ACPI_PM_STATE_MIN_VERSION, ACPI_PM_STATE_VERSION);
  const r = new StateReader(id, state);
  const s: AcpiPmState = {
    pm1Status: r.int("pm1Status", 0, 0xffff),
    pm1Enable: r.int("pm1Enable", 0, 0xffff),
    pm1Control: r.int("pm1Control", 0, 0xffff),
    timer: r.int("timer", 0, 0xffffff),
    gpe0: r.bytes("gpe0", GPE0_BYTES, GPE0_BYTES),
  };
  if (s.pm1Control & 0x2000) {
    throw new RangeError(`Cannot restore ${id}: field 'pm1Control' has SLP_EN set (got ${s.pm1Control})`);
  }
  return s;
}
