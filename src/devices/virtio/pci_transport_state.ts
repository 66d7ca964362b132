/**
 * The migratable state of a virtio-pci function (`"pci/<bus>/<slot>.<fn>"`): the PCI header
 * (256 bytes: command, BARs, interrupt line, MSI-X control), the virtio transport registers
 * (status, feature selects, driver features, config vector and generation, ISR), every queue's
 * registers and ring positions, and the MSI-X table and PBA. Device-specific state (block,
 * net) is a separate section (STYLE.md c.9). The payload is untrusted: {@linkcode parseTransportState}
 * checks every field against this side's device before anything is applied.
 * @module
 */
import type { StateValue } from "../device.ts";
import { checkStateVersion, StateReader } from "../state_fields.ts";
import { PCI_CONFIG_LEGACY_BYTES } from "../pci/config_space.ts";
import { MsixVectors } from "../pci/msix.ts";
import { parseQueueState, type QueueState } from "./queue_state.ts";

/** Version written with the state; bump on any layout change. */
export const TRANSPORT_STATE_VERSION = 1;
/** Oldest version {@linkcode parseTransportState} still reads. */
export const TRANSPORT_STATE_MIN_VERSION = 1;

/** Plain data. */
export type TransportState = {
  /** PCI config header, 256 bytes. */
  config: Uint8Array;
  status: number;
  deviceFeatureSelect: number;
  driverFeatureSelect: number;
  driverFeaturesLo: number;
  driverFeaturesHi: number;
  configVector: number;
  configGeneration: number;
  queueSelect: number;
  isr: number;
  queues: QueueState[];
  msixTable: Uint8Array;
  msixPba: Uint8Array;
};

/** What the parser needs to know about this side's function. */
export interface TransportShape {
  readonly id: string;
  readonly deviceFeatures: bigint;
  readonly config: { checkSaved(saved: Uint8Array): string | undefined };
  readonly plan: { info: { queueSizes: number[] }; msixVectors: number };
}

/**
 * Validates an untrusted payload against `t`.
 * @throws {TypeError | RangeError} naming the field
 */
export function parseTransportState(t: TransportShape, state: StateValue, version: number): TransportState {
  const id = t.id;
  checkStateVersion(id, version, TRANSPORT_STATE_MIN_VERSION, TRANSPORT_STATE_VERSION);
  const r = new StateReader(id, state);
  const config = r.bytes("config", PCI_CONFIG_LEGACY_BYTES, PCI_CONFIG_LEGACY_BYTES);
  const bad = t.config.checkSaved(config);
  if (bad) throw new RangeError(`Cannot restore ${id}: field 'config' ${bad}`);
  const vectors = t.plan.msixVectors;
  const table = r.bytes("msixTable", MsixVectors.tableBytes(vectors), MsixVectors.tableBytes(vectors));
  const pba = r.bytes("msixPba", MsixVectors.pbaBytes(vectors), MsixVectors.pbaBytes(vectors));
  const vector = (field: string): number => {
    const v = r.int(field, 0, 0xffff);
    if (v !== 0xffff && v >= vectors) {
      throw new RangeError(`Cannot restore ${id}: field '${field}' names vector ${v} of ${vectors}`);
    }
    return v;
  };
  const s: TransportState = {
    config,
    status: r.int("status", 0, 255),
    deviceFeatureSelect: r.int("deviceFeatureSelect", 0, 0xffffffff),
    driverFeatureSelect: r.int("driverFeatureSelect", 0, 0xffffffff),
    driverFeaturesLo: r.int("driverFeaturesLo", 0, 0xffffffff),
    driverFeaturesHi: r.int("driverFeaturesHi", 0, 0xffffffff),
    configVector: vector("configVector"),
    configGeneration: r.int("configGeneration", 0, 255),
    queueSelect: r.int("queueSelect", 0, 0xffff),
    isr: r.int("isr", 0, 3),
    queues: [],
    msixTable: table,
    msixPba: pba,
  };
  const features = (BigInt(s.driverFeaturesHi) << 32n) | BigInt(s.driverFeaturesLo);
  if ((features & ~t.deviceFeatures) !== 0n) {
    throw new RangeError(
      `Cannot restore ${id}: field 'driverFeaturesLo'/'driverFeaturesHi' hold 0x${features.toString(16)}, ` +
        `not a subset of this device's 0x${t.deviceFeatures.toString(16)}`,
    );
  }
  const queues = (state as { [k: string]: StateValue })["queues"];
  const sizes = t.plan.info.queueSizes;
  if (!Array.isArray(queues)) throw new TypeError(`Cannot restore ${id}: field 'queues' must be an array`);
  if (queues.length !== sizes.length) {
    throw new RangeError(
      `Cannot restore ${id}: field 'queues' holds ${queues.length} queues, this device has ${sizes.length}`,
    );
  }
  queues.forEach((q, i) => {
    const qs = parseQueueState(id, `queues[${i}]`, q, sizes[i]!);
    if (qs.vector !== 0xffff && qs.vector >= vectors) {
      throw new RangeError(
        `Cannot restore ${id}: field 'queues[${i}].vector' names vector ${qs.vector} of ${vectors}`,
      );
    }
    s.queues.push(qs);
  });
  return s;
}
