/**
 * Test helpers for virtio: a fake guest RAM over an (optionally shared) ArrayBuffer, a plan for a
 * transport without KVM, and {@linkcode TestDriver}, a tiny virtio-pci driver that speaks to a
 * transport's BAR the way a guest does and keeps its rings in the fake RAM. Guest-side writes go
 * to the bytes directly (the guest's writes are KVM's business, not the VMM bitmap's).
 * @module
 */
import { GuestMemory, newDirtyBitmap } from "../../memory/guest_memory.ts";
import { MsiRouting } from "../pci/msix.ts";
import {
  BAR_NOTIFY,
  CC_DF,
  CC_DFSELECT,
  CC_GF,
  CC_GFSELECT,
  CC_Q_DESC,
  CC_Q_DEVICE,
  CC_Q_DRIVER,
  CC_Q_ENABLE,
  CC_Q_SELECT,
  CC_Q_SIZE,
  CC_STATUS,
  createTransportShared,
  NOTIFY_OFF_MULTIPLIER,
  STATUS_ACKNOWLEDGE,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  type VirtioDeviceInfo,
  type VirtioPciPlan,
  VirtioPciTransport,
  type VirtioPciTransportOptions,
} from "./pci_transport.ts";
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from "./queue.ts";

/** A fake guest RAM of `sizeBytes` at GPA 0. */
export function fakeMemory(sizeBytes = 4 << 20, shared = false): GuestMemory {
  return new GuestMemory({
    regions: [{
      gpa: 0,
      sizeBytes,
      slot: 0,
      hostAddr: 0n,
      vmmDirty: newDirtyBitmap(sizeBytes),
      buffer: shared ? new SharedArrayBuffer(sizeBytes) : new ArrayBuffer(sizeBytes),
    }],
  });
}

/** A transport plan with no KVM wiring (irqfds/eventfds -1 unless given). */
export function testPlan(info: VirtioDeviceInfo, overrides: Partial<VirtioPciPlan> = {}): VirtioPciPlan {
  const vectors = info.queueSizes.length + 1;
  const routingShared = MsiRouting.createShared(64);
  const gsiBase = new MsiRouting(routingShared).allocate(vectors);
  return {
    deviceId: "virtio-test/t0",
    busName: "pcie.0",
    addr: { slot: 4, fn: 0 },
    info,
    ...createTransportShared(info, vectors),
    routingShared,
    msixVectors: vectors,
    gsiBase,
    irqfds: new Array(vectors).fill(-1),
    intxGsi: 20,
    intxFd: -1,
    queueEventfds: info.queueSizes.map(() => -1),
    barGpa: 0xc000_0000,
    ...overrides,
  };
}

/** Builds a transport with its BAR set and memory decode on. */
export function testTransport(options: VirtioPciTransportOptions): VirtioPciTransport {
  const t = new VirtioPciTransport(options);
  t.config.setBarAddress(0, options.plan.barGpa);
  t.config.write(4, Uint8Array.of(0x06, 0)); // memory decode + bus master
  return t;
}

/** One buffer the test driver offers. */
export interface TestBuffer {
  /** Bytes to place (device-readable), or the length of a device-writable buffer. */
  data?: Uint8Array;
  len?: number;
  writable: boolean;
  /** Alignment of the buffer's guest address. @default 8 */
  align?: number;
}

/** A used entry with the buffers it covered. */
export interface TestUsed {
  id: number;
  len: number;
}

interface DriverQueue {
  size: number;
  desc: number;
  avail: number;
  used: number;
  availIdx: number;
  usedSeen: number;
  nextDesc: number;
  buffers: Map<number, Array<{ gpa: number; len: number }>>;
}

/** A minimal virtio-pci driver over a transport's BAR0 and a fake RAM. */
export class TestDriver {
  readonly memory: GuestMemory;
  readonly bar: { read(o: number, d: Uint8Array): void; write(o: number, d: Uint8Array): void };
  readonly queues: DriverQueue[] = [];
  #heap: number;
  readonly #bytes: Uint8Array;
  readonly #dv: DataView;

  /**
   * @param heapStart first guest address the driver allocates rings and buffers from
   */
  constructor(memory: GuestMemory, bar: TestDriver["bar"], heapStart = 0x10000) {
    this.memory = memory;
    this.bar = bar;
    this.#heap = heapStart;
    const r = memory.regions[0]!;
    this.#bytes = r.bytes;
    this.#dv = new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength);
  }

  alloc(len: number, align = 16): number {
    const at = Math.ceil(this.#heap / align) * align;
    this.#heap = at + len;
    if (this.#heap > this.#bytes.length) throw new RangeError("test RAM exhausted");
    return at;
  }

  read32(off: number): number {
    const d = new Uint8Array(4);
    this.bar.read(off, d);
    return new DataView(d.buffer).getUint32(0, true);
  }
  read16(off: number): number {
    const d = new Uint8Array(2);
    this.bar.read(off, d);
    return new DataView(d.buffer).getUint16(0, true);
  }
  read8(off: number): number {
    const d = new Uint8Array(1);
    this.bar.read(off, d);
    return d[0]!;
  }
  write32(off: number, v: number): void {
    const d = new Uint8Array(4);
    new DataView(d.buffer).setUint32(0, v >>> 0, true);
    this.bar.write(off, d);
  }
  write16(off: number, v: number): void {
    this.bar.write(off, Uint8Array.of(v & 0xff, (v >>> 8) & 0xff));
  }
  write8(off: number, v: number): void {
    this.bar.write(off, Uint8Array.of(v));
  }

  /** Device features (64 bits). */
  deviceFeatures(): bigint {
    this.write32(CC_DFSELECT, 0);
    const lo = this.read32(CC_DF);
    this.write32(CC_DFSELECT, 1);
    const hi = this.read32(CC_DF);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  /**
   * Runs the init sequence (spec §3.1.1) and sets up every queue.
   * @param features what to accept (default: everything offered)
   * @param queueSizes the size of each queue (default: the device maximum)
   * @returns the status read back after FEATURES_OK
   */
  init(options: { features?: bigint; queueSizes?: number[]; numQueues: number }): number {
    this.write8(CC_STATUS, 0);
    this.write8(CC_STATUS, STATUS_ACKNOWLEDGE);
    this.write8(CC_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    const f = options.features ?? this.deviceFeatures();
    this.write32(CC_GFSELECT, 0);
    this.write32(CC_GF, Number(f & 0xffffffffn));
    this.write32(CC_GFSELECT, 1);
    this.write32(CC_GF, Number(f >> 32n));
    this.write8(CC_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    const st = this.read8(CC_STATUS);
    if (!(st & STATUS_FEATURES_OK)) return st;
    for (let q = 0; q < options.numQueues; q++) {
      this.write16(CC_Q_SELECT, q);
      const max = this.read16(CC_Q_SIZE);
      const size = options.queueSizes?.[q] ?? max;
      this.write16(CC_Q_SIZE, size);
      const desc = this.alloc(16 * size, 16);
      const avail = this.alloc(6 + 2 * size, 2);
      const used = this.alloc(6 + 8 * size, 4);
      for (const [off, v] of [[CC_Q_DESC, desc], [CC_Q_DRIVER, avail], [CC_Q_DEVICE, used]] as const) {
        this.write32(off, v);
        this.write32(off + 4, 0);
      }
      this.write16(CC_Q_ENABLE, 1);
      this.queues[q] = { size, desc, avail, used, availIdx: 0, usedSeen: 0, nextDesc: 0, buffers: new Map() };
    }
    this.write8(CC_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    return st;
  }

  /** Writes a raw descriptor. */
  writeDesc(table: number, i: number, addr: number, len: number, flags: number, next: number): void {
    const o = table + 16 * i;
    this.#dv.setBigUint64(o, BigInt(addr), true);
    this.#dv.setUint32(o + 8, len, true);
    this.#dv.setUint16(o + 12, flags, true);
    this.#dv.setUint16(o + 14, next, true);
  }

  /** Puts head `head` on queue `q`'s available ring (without notifying). */
  pushAvail(q: number, head: number): void {
    const dq = this.queues[q]!;
    this.#dv.setUint16(dq.avail + 4 + 2 * (dq.availIdx % dq.size), head, true);
    dq.availIdx = (dq.availIdx + 1) & 0xffff;
    this.#dv.setUint16(dq.avail + 2, dq.availIdx, true);
  }

  /** Sets the avail ring's `used_event` (event idx) or flags. */
  setUsedEvent(q: number, v: number): void {
    const dq = this.queues[q]!;
    this.#dv.setUint16(dq.avail + 4 + 2 * dq.size, v, true);
  }

  /**
   * Places `buffers` in RAM, chains them (or an indirect table) and makes the chain available.
   * @returns the head index
   */
  submit(q: number, buffers: TestBuffer[], options: { indirect?: boolean } = {}): number {
    const dq = this.queues[q]!;
    const placed = buffers.map((b) => {
      const len = b.data?.length ?? b.len ?? 0;
      const gpa = this.alloc(Math.max(len, 1), b.align ?? 8);
      if (b.data) this.#bytes.set(b.data, gpa);
      return { gpa, len, writable: b.writable };
    });
    const head = dq.nextDesc % dq.size;
    if (options.indirect) {
      const table = this.alloc(16 * placed.length, 16);
      placed.forEach((p, i) =>
        this.writeDesc(
          table,
          i,
          p.gpa,
          p.len,
          (p.writable ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < placed.length ? VIRTQ_DESC_F_NEXT : 0),
          i + 1,
        )
      );
      this.writeDesc(dq.desc, head, table, 16 * placed.length, VIRTQ_DESC_F_INDIRECT, 0);
      dq.nextDesc++;
    } else {
      placed.forEach((p, i) => {
        const idx = (dq.nextDesc + i) % dq.size;
        const next = (dq.nextDesc + i + 1) % dq.size;
        this.writeDesc(
          dq.desc,
          idx,
          p.gpa,
          p.len,
          (p.writable ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < placed.length ? VIRTQ_DESC_F_NEXT : 0),
          next,
        );
      });
      dq.nextDesc += placed.length;
    }
    dq.buffers.set(head, placed);
    this.pushAvail(q, head);
    return head;
  }

  /** Writes the notification register of queue `q`. */
  notify(q: number): void {
    this.write16(BAR_NOTIFY + NOTIFY_OFF_MULTIPLIER * q, q);
  }

  /** The used index as the device last published it. */
  usedIdx(q: number): number {
    return this.#dv.getUint16(this.queues[q]!.used + 2, true);
  }

  /** The used ring's flags (bit 0: VIRTQ_USED_F_NO_NOTIFY, the device asks for no notifications). */
  usedFlags(q: number): number {
    return this.#dv.getUint16(this.queues[q]!.used, true);
  }

  /** The `avail_event` the device wrote (event idx). */
  availEvent(q: number): number {
    const dq = this.queues[q]!;
    return this.#dv.getUint16(dq.used + 4 + 8 * dq.size, true);
  }

  /** New used entries since the last call. */
  takeUsed(q: number): TestUsed[] {
    const dq = this.queues[q]!;
    const out: TestUsed[] = [];
    const idx = this.usedIdx(q);
    while (dq.usedSeen !== idx) {
      const o = dq.used + 4 + 8 * (dq.usedSeen % dq.size);
      out.push({ id: this.#dv.getUint32(o, true), len: this.#dv.getUint32(o + 4, true) });
      dq.usedSeen = (dq.usedSeen + 1) & 0xffff;
    }
    return out;
  }

  /** The bytes of buffer `i` of the chain with head `head`. */
  buffer(q: number, head: number, i: number): Uint8Array {
    const b = this.queues[q]!.buffers.get(head)![i]!;
    return this.#bytes.slice(b.gpa, b.gpa + b.len);
  }
}
