/**
 * The migratable state of a virtio-blk drive (`"virtio-blk/<id>"`): the driver's cache mode
 * (`writeback`, from `VIRTIO_BLK_F_CONFIG_WCE`) and the image's identity (capacity, read-only,
 * serial). The identity is not applied but checked: a destination whose image differs refuses
 * the state naming the field. Queue state belongs to the transport (pci_transport_state.ts); the
 * image path is configuration (part of the config digest), not state.
 * @module
 */
import type { StateValue } from "../../device.ts";
import { checkStateVersion, StateReader } from "../../state_fields.ts";

/** Version written with the state; bump on any layout change. */
export const BLOCK_STATE_VERSION = 1;
/** Oldest version {@linkcode parseBlockState} still reads. */
export const BLOCK_STATE_MIN_VERSION = 1;

/** Plain data. */
export type BlockState = {
  capacitySectors: number;
  readonly: boolean;
  /** GET_ID bytes (≤ 20). */
  serial: Uint8Array;
  /** Write-back (true) or write-through (false) cache mode chosen by the driver. */
  writeback: boolean;
};

/**
 * Validates an untrusted payload against this side's drive.
 * @throws {TypeError | RangeError} naming the field
 */
export function parseBlockState(
  id: string,
  state: StateValue,
  version: number,
  own: { capacitySectors: number; readonly: boolean; serial: Uint8Array },
): BlockState {
  checkStateVersion(id, version, BLOCK_STATE_MIN_VERSION, BLOCK_STATE_VERSION);
  const r = new StateReader(id, state);
  const s: BlockState = {
    capacitySectors: r.int("capacitySectors", 0, Number.MAX_SAFE_INTEGER),
    readonly: r.bool("readonly"),
    serial: r.bytes("serial", 0, 20),
    writeback: r.bool("writeback"),
  };
  if (s.capacitySectors !== own.capacitySectors) {
    throw new RangeError(
      `Cannot restore ${id}: field 'capacitySectors' is ${s.capacitySectors} but this image has ${own.capacitySectors} sectors`,
    );
  }
  if (s.readonly !== own.readonly) {
    throw new RangeError(
      `Cannot restore ${id}: field 'readonly' is ${s.readonly} but this drive has readonly=${
        own.readonly ? "on" : "off"
      }`,
    );
  }
  if (s.serial.length !== own.serial.length || s.serial.some((b, i) => b !== own.serial[i])) {
    throw new RangeError(`Cannot restore ${id}: field 'serial' differs from this drive's serial`);
  }
  return s;
}
