/**
 * The common configuration region of BAR0 (`struct virtio_pci_common_cfg`, spec §4.1.4.3):
 * feature negotiation (FEATURES_OK only for a subset of the device's features with VERSION_1),
 * device status and the driver reset (deferred while the I/O Worker is busy: see
 * pci_transport.ts), the config MSI-X vector and each queue's registers. State lives in the
 * transport's shared words (virtio_pci_regs.ts), under its lock.
 * @module
 */
import { lockShared, unlockShared } from "../shared_lock.ts";
import { type QueueRegs, VIRTIO_MSI_NO_VECTOR } from "./queue_state.ts";
import {
  CC_CFGGEN,
  CC_DF,
  CC_DFSELECT,
  CC_GF,
  CC_GFSELECT,
  CC_MSIX,
  CC_NUMQ,
  CC_Q_DESC,
  CC_Q_DEVICE,
  CC_Q_DRIVER,
  CC_Q_ENABLE,
  CC_Q_MSIX,
  CC_Q_NOFF,
  CC_Q_SELECT,
  CC_Q_SIZE,
  CC_STATUS,
  COMMON_CFG_BYTES,
  STATUS_FEATURES_OK,
  STATUS_NEEDS_RESET,
  T_BUSY,
  T_CFG_VECTOR,
  T_CFGGEN,
  T_DFSEL,
  T_GF_HI,
  T_GF_LO,
  T_GFSEL,
  T_ISR,
  T_LOCK,
  T_QSEL,
  T_RESET_PENDING,
  T_RESETS,
  T_STATUS,
  VIRTIO_F_VERSION_1,
} from "./virtio_pci_regs.ts";

function u32(data: Uint8Array): number {
  let v = 0;
  for (let i = data.length - 1; i >= 0; i--) v = v * 256 + data[i]!;
  return v;
}

/** Options for {@linkcode CommonConfig}. */
export interface CommonConfigOptions {
  /** The transport's shared words. */
  words: Int32Array;
  queues: QueueRegs[];
  /** The device's features including transport bits. */
  deviceFeatures: bigint;
  msixVectors: number;
  log: { warnLimited(format: string, ...args: unknown[]): void };
}

/** One thread's view of the common configuration; see the module doc. */
export class CommonConfig {
  readonly #w: Int32Array;
  readonly #queues: QueueRegs[];
  readonly #numQueues: number;
  readonly #deviceFeatures: bigint;
  readonly #msixVectors: number;
  readonly #log: CommonConfigOptions["log"];

  constructor(options: CommonConfigOptions) {
    this.#w = options.words;
    this.#queues = options.queues;
    this.#numQueues = options.queues.length;
    this.#deviceFeatures = options.deviceFeatures;
    this.#msixVectors = options.msixVectors;
    this.#log = options.log;
  }

  /** The driver's accepted features. */
  get driverFeatures(): bigint {
    return (BigInt(this.#w[T_GF_HI]! >>> 0) << 32n) | BigInt(this.#w[T_GF_LO]! >>> 0);
  }

  #image(): Uint8Array {
    const img = new Uint8Array(0x40);
    const dv = new DataView(img.buffer);
    const w = this.#w;
    const dfsel = w[T_DFSEL]!;
    dv.setUint32(CC_DFSELECT, dfsel, true);
    dv.setUint32(
      CC_DF,
      dfsel < 2 ? Number((this.#deviceFeatures >> BigInt(32 * dfsel)) & 0xffffffffn) : 0,
      true,
    );
    dv.setUint32(CC_GFSELECT, w[T_GFSEL]!, true);
    const gfsel = w[T_GFSEL]!;
    dv.setUint32(CC_GF, gfsel === 0 ? w[T_GF_LO]! >>> 0 : gfsel === 1 ? w[T_GF_HI]! >>> 0 : 0, true);
    dv.setUint16(CC_MSIX, w[T_CFG_VECTOR]!, true);
    dv.setUint16(CC_NUMQ, this.#numQueues, true);
    img[CC_STATUS] = w[T_STATUS]!;
    img[CC_CFGGEN] = w[T_CFGGEN]!;
    const qsel = w[T_QSEL]!;
    dv.setUint16(CC_Q_SELECT, qsel, true);
    const q = this.#queues[qsel];
    if (q) {
      dv.setUint16(CC_Q_SIZE, q.size, true);
      dv.setUint16(CC_Q_MSIX, q.vector, true);
      dv.setUint16(CC_Q_ENABLE, q.enabled ? 1 : 0, true);
      dv.setUint16(CC_Q_NOFF, qsel, true);
      dv.setBigUint64(CC_Q_DESC, BigInt(q.descGpa), true);
      dv.setBigUint64(CC_Q_DRIVER, BigInt(q.driverGpa), true);
      dv.setBigUint64(CC_Q_DEVICE, BigInt(q.deviceGpa), true);
    }
    return img;
  }

  /** A driver read of the common configuration region. */
  read(offset: number, data: Uint8Array): void {
    lockShared(this.#w, T_LOCK);
    try {
      const img = this.#image();
      for (let i = 0; i < data.length; i++) data[i] = offset + i < COMMON_CFG_BYTES ? img[offset + i]! : 0;
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
  }

  /** A driver write to the common configuration region. */
  write(offset: number, data: Uint8Array): void {
    if (offset + data.length > COMMON_CFG_BYTES) return;
    lockShared(this.#w, T_LOCK);
    try {
      this.#apply(offset, data);
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
  }

  #apply(offset: number, data: Uint8Array): void {
    const w = this.#w;
    const v = u32(data);
    const q = this.#queues[w[T_QSEL]!];
    const status = w[T_STATUS]!;
    switch (offset) {
      case CC_DFSELECT:
        w[T_DFSEL] = v;
        return;
      case CC_GFSELECT:
        w[T_GFSEL] = v;
        return;
      case CC_GF:
        if (status & STATUS_FEATURES_OK) return;
        if (w[T_GFSEL] === 0) w[T_GF_LO] = v;
        else if (w[T_GFSEL] === 1) w[T_GF_HI] = v;
        return;
      case CC_MSIX:
        w[T_CFG_VECTOR] = this.#vector(v);
        return;
      case CC_STATUS:
        return this.#writeStatus(data[0]!);
      case CC_Q_SELECT:
        w[T_QSEL] = v & 0xffff;
        return;
    }
    if (!q) return;
    switch (offset) {
      case CC_Q_SIZE:
        if (!q.enabled && v >= 1 && v <= q.maxSize && (v & (v - 1)) === 0) q.size = v;
        return;
      case CC_Q_MSIX:
        q.vector = this.#vector(v);
        return;
      case CC_Q_ENABLE:
        if (v === 1) q.enabled = true;
        return;
    }
    // 64-bit address registers, written as two 32-bit halves or one 64-bit access.
    for (const [base, which] of [[CC_Q_DESC, 0], [CC_Q_DRIVER, 1], [CC_Q_DEVICE, 2]] as const) {
      if (offset < base || offset >= base + 8) continue;
      if (q.enabled) return;
      if (data.length === 8 && offset === base) {
        q.setAddressHalf(which, false, u32(data.subarray(0, 4)));
        q.setAddressHalf(which, true, u32(data.subarray(4, 8)));
      } else if (data.length === 4) q.setAddressHalf(which, offset === base + 4, v);
      return;
    }
  }

  #vector(v: number): number {
    return v !== VIRTIO_MSI_NO_VECTOR && v < this.#msixVectors ? v : VIRTIO_MSI_NO_VECTOR;
  }

  #writeStatus(value: number): void {
    const w = this.#w;
    if (value === 0) {
      if (w[T_BUSY]! > 0) w[T_RESET_PENDING] = 1;
      else this.resetLocked();
      return;
    }
    let next = (value & ~STATUS_NEEDS_RESET) | (w[T_STATUS]! & STATUS_NEEDS_RESET);
    if (next & STATUS_FEATURES_OK && !(w[T_STATUS]! & STATUS_FEATURES_OK)) {
      const want = this.driverFeatures;
      if ((want & ~this.#deviceFeatures) !== 0n || !(want & (1n << BigInt(VIRTIO_F_VERSION_1)))) {
        this.#log.warnLimited(
          "Refusing FEATURES_OK: driver features 0x%s are not a subset of 0x%s with VERSION_1",
          want.toString(16),
          this.#deviceFeatures.toString(16),
        );
        next &= ~STATUS_FEATURES_OK;
      }
    }
    w[T_STATUS] = next;
  }

  /** The virtio reset (caller holds the lock): registers and queues back to their reset values. */
  resetLocked(): void {
    const w = this.#w;
    for (const i of [T_DFSEL, T_GFSEL, T_GF_LO, T_GF_HI, T_STATUS, T_QSEL, T_ISR, T_RESET_PENDING]) w[i] = 0;
    w[T_CFG_VECTOR] = VIRTIO_MSI_NO_VECTOR;
    for (const q of this.#queues) q.reset();
    Atomics.add(w, T_RESETS, 1);
  }
}
