/**
 * The migratable state of a virtio-net NIC (`"virtio-net/<id>"`): the MAC in config space (the
 * driver may have changed it) and the status word (link up, a pending announce). Queues belong to
 * the transport; the tap name is configuration. Frames in flight on the tap are not state: a
 * network may drop them, and the guest's protocols recover.
 * @module
 */
import type { StateValue } from "../../device.ts";
import { checkStateVersion, StateReader } from "../../state_fields.ts";

/** Version written with the state; bump on any layout change. */
export const NET_STATE_VERSION = 1;
/** Oldest version {@linkcode parseNetState} still reads. */
export const NET_STATE_MIN_VERSION = 1;

/** Plain data. */
export type NetState = {
  mac: Uint8Array;
  /** `VIRTIO_NET_S_LINK_UP` (1) | `VIRTIO_NET_S_ANNOUNCE` (2). */
  status: number;
};

/**
 * Validates an untrusted payload.
 * @throws {TypeError | RangeError} naming the field
 */
export function parseNetState(id: string, state: StateValue, version: number): NetState {
  checkStateVersion(id, version, NET_STATE_MIN_VERSION, NET_STATE_VERSION);
  const r = new StateReader(id, state);
  const s: NetState = { mac: r.bytes("mac", 6, 6), status: r.int("status", 0, 3) };
  if (s.mac[0]! & 1) throw new RangeError(`Cannot restore ${id}: field 'mac' is a multicast address`);
  return s;
}
