/**
 * A split virtqueue's registers and ring positions, as Int32 words in the transport's
 * SharedArrayBuffer (vCPU Workers write the registers through the common configuration, the I/O
 * Worker advances the positions, the main thread saves them while paused), and their migratable
 * form {@linkcode QueueState}, which is untrusted on restore (virtio-queue's `QueueState` rule).
 * @module
 */
import type { StateValue } from "../device.ts";
import { StateReader } from "../state_fields.ts";

/** Words per queue in the shared buffer. */
export const QUEUE_WORDS = 16;
// 64-bit addresses take two words: low at the named index, high at the next.
const Q_SIZE = 0, Q_MAX = 1, Q_VECTOR = 2, Q_ENABLE = 3, Q_DESC_LO = 4;
const Q_DRV_LO = 6, Q_DEV_LO = 8, Q_NEXT_AVAIL = 10, Q_NEXT_USED = 11;
const Q_SIGNALLED = 12, Q_BROKEN = 13;

/** "No MSI-X vector" (VIRTIO_MSI_NO_VECTOR). */
export const VIRTIO_MSI_NO_VECTOR = 0xffff;
/** Largest queue size the spec allows for a split ring. */
export const VIRTQ_MAX_SIZE = 32768;

/** One queue's slice of the shared words. */
export class QueueRegs {
  readonly #w: Int32Array;
  readonly #b: number;

  /**
   * @param words the transport's shared words
   * @param base index of this queue's first word
   */
  constructor(words: Int32Array, base: number) {
    this.#w = words;
    this.#b = base;
  }

  #get(i: number): number {
    return Atomics.load(this.#w, this.#b + i);
  }
  #set(i: number, v: number): void {
    Atomics.store(this.#w, this.#b + i, v | 0);
  }
  #get64(lo: number): number {
    return (this.#get(lo + 1) >>> 0) * 2 ** 32 + (this.#get(lo) >>> 0);
  }
  #set64(lo: number, v: number): void {
    this.#set(lo, v % 2 ** 32);
    this.#set(lo + 1, Math.floor(v / 2 ** 32));
  }

  /** The device's maximum (fixed at creation). */
  get maxSize(): number {
    return this.#get(Q_MAX);
  }
  set maxSize(v: number) {
    this.#set(Q_MAX, v);
  }
  get size(): number {
    return this.#get(Q_SIZE);
  }
  set size(v: number) {
    this.#set(Q_SIZE, v);
  }
  get vector(): number {
    return this.#get(Q_VECTOR) & 0xffff;
  }
  set vector(v: number) {
    this.#set(Q_VECTOR, v & 0xffff);
  }
  get enabled(): boolean {
    return this.#get(Q_ENABLE) === 1;
  }
  set enabled(v: boolean) {
    this.#set(Q_ENABLE, v ? 1 : 0);
  }
  get descGpa(): number {
    return this.#get64(Q_DESC_LO);
  }
  set descGpa(v: number) {
    this.#set64(Q_DESC_LO, v);
  }
  get driverGpa(): number {
    return this.#get64(Q_DRV_LO);
  }
  set driverGpa(v: number) {
    this.#set64(Q_DRV_LO, v);
  }
  get deviceGpa(): number {
    return this.#get64(Q_DEV_LO);
  }
  set deviceGpa(v: number) {
    this.#set64(Q_DEV_LO, v);
  }
  /** Sets one 32-bit half of a 64-bit address register (`which`: 0 desc, 1 driver, 2 device). */
  setAddressHalf(which: number, high: boolean, v: number): void {
    this.#set([Q_DESC_LO, Q_DRV_LO, Q_DEV_LO][which]! + (high ? 1 : 0), v);
  }
  /** Free-running 16-bit index of the next avail entry the device will take. */
  get nextAvail(): number {
    return this.#get(Q_NEXT_AVAIL) & 0xffff;
  }
  set nextAvail(v: number) {
    this.#set(Q_NEXT_AVAIL, v & 0xffff);
  }
  /** Free-running 16-bit index of the next used entry the device will fill. */
  get nextUsed(): number {
    return this.#get(Q_NEXT_USED) & 0xffff;
  }
  set nextUsed(v: number) {
    this.#set(Q_NEXT_USED, v & 0xffff);
  }
  /** Used index at the last interrupt decision (event-idx bookkeeping). */
  get signalledUsed(): number {
    return this.#get(Q_SIGNALLED) & 0xffff;
  }
  set signalledUsed(v: number) {
    this.#set(Q_SIGNALLED, v & 0xffff);
  }
  /** The device found the queue unusable (bad addresses, bogus avail index) and stopped using it. */
  get broken(): boolean {
    return this.#get(Q_BROKEN) === 1;
  }
  set broken(v: boolean) {
    this.#set(Q_BROKEN, v ? 1 : 0);
  }

  /** Back to reset values (size = max, no vector, disabled, zero addresses and positions). */
  reset(): void {
    const max = this.maxSize;
    for (let i = 0; i < QUEUE_WORDS; i++) this.#set(i, 0);
    this.#set(Q_MAX, max);
    this.#set(Q_SIZE, max);
    this.#set(Q_VECTOR, VIRTIO_MSI_NO_VECTOR);
  }

  /** The migratable form. */
  save(): QueueState {
    return {
      size: this.size,
      vector: this.vector,
      enabled: this.enabled,
      desc: this.descGpa,
      driver: this.driverGpa,
      device: this.deviceGpa,
      nextAvail: this.nextAvail,
      nextUsed: this.nextUsed,
      signalledUsed: this.signalledUsed,
      broken: this.broken,
    };
  }

  /** Applies a parsed state. */
  restore(s: QueueState): void {
    this.size = s.size;
    this.vector = s.vector;
    this.enabled = s.enabled;
    this.descGpa = s.desc;
    this.driverGpa = s.driver;
    this.deviceGpa = s.device;
    this.nextAvail = s.nextAvail;
    this.nextUsed = s.nextUsed;
    this.signalledUsed = s.signalledUsed;
    this.broken = s.broken;
  }
}

/** A queue's migratable state (plain data). */
export type QueueState = {
  size: number;
  vector: number;
  enabled: boolean;
  /** Guest addresses of the descriptor table, driver (avail) and device (used) areas. */
  desc: number;
  driver: number;
  device: number;
  nextAvail: number;
  nextUsed: number;
  signalledUsed: number;
  broken: boolean;
};

const MAX_GPA = 2 ** 52;

/**
 * Validates one untrusted queue entry.
 * @param id device id for messages
 * @param field the field's name in messages, e.g. `queues[1]`
 * @param maxSize this device's maximum for the queue
 * @throws {TypeError | RangeError} naming `field` and the member
 */
export function parseQueueState(id: string, field: string, v: StateValue, maxSize: number): QueueState {
  let r: StateReader;
  try {
    r = new StateReader(id, v);
  } catch {
    throw new TypeError(`Cannot restore ${id}: field '${field}' must be an object`);
  }
  try {
    const s: QueueState = {
      size: r.int("size", 0, maxSize),
      vector: r.int("vector", 0, 0xffff),
      enabled: r.bool("enabled"),
      desc: r.int("desc", 0, MAX_GPA),
      driver: r.int("driver", 0, MAX_GPA),
      device: r.int("device", 0, MAX_GPA),
      nextAvail: r.int("nextAvail", 0, 0xffff),
      nextUsed: r.int("nextUsed", 0, 0xffff),
      signalledUsed: r.int("signalledUsed", 0, 0xffff),
      broken: r.bool("broken"),
    };
    if (s.size !== 0 && (s.size & (s.size - 1)) !== 0) {
      throw new RangeError(`Cannot restore ${id}: field 'size' must be a power of two (got ${s.size})`);
    }
    if (s.desc % 16 || s.driver % 2 || s.device % 4) {
      throw new RangeError(
        `Cannot restore ${id}: field 'desc' must be 16-aligned, 'driver' 2-aligned, 'device' 4-aligned`,
      );
    }
    return s;
  } catch (e) {
    if (!(e instanceof TypeError || e instanceof RangeError)) throw e;
    const msg = e.message.replace(/field '([^']*)'/g, `field '${field}.$1'`);
    throw e instanceof RangeError ? new RangeError(msg) : new TypeError(msg);
  }
}
