/**
 * The virtio 1.x modern PCI transport (spec §4.1): one PCI function with one 64-bit memory BAR
 * holding the common configuration, ISR, device configuration, notification area and the MSI-X
 * table and PBA, each announced by a vendor capability. It is transport-only: the device (block,
 * net) describes itself with {@linkcode VirtioDeviceInfo} and processes queues in the I/O Worker;
 * the transport owns feature negotiation, status, reset, queue registers and ring positions,
 * interrupts (MSI-X, INTx fallback), and their migration state (pci_transport_state.ts).
 *
 * Threads (DESIGN.md §2): registers live in SharedArrayBuffers; vCPU Workers serve the guest's
 * BAR and config accesses, the I/O Worker processes queues between {@linkcode beginWork} and
 * {@linkcode endWork}, the main thread saves/restores. A driver reset (status ← 0) that arrives
 * while the I/O Worker is inside a pass is deferred until the pass ends, and status reads keep
 * returning the old value until then: the driver must wait for status to read 0 (spec
 * §4.1.4.3.2), so the device never writes guest memory after the reset completes. vCPU threads
 * never wait for queue processing.
 *
 * Notifications: queue `q` is notified by a write at `BAR0 + NOTIFY + q * 4`
 * (`notify_off_multiplier` 4); the machine binds that address to the queue's eventfd with
 * `KVM_IOEVENTFD` ({@linkcode armIoeventfds}), and this class moves the binding when the guest
 * moves the BAR. Without the binding the write exits and the handler signals the same eventfd.
 * @module
 */
import type { BusDevice, Migratable, StateValue } from "../device.ts";
import type { GuestMemory } from "../../memory/guest_memory.ts";
import { lockShared, unlockShared } from "../shared_lock.ts";
import {
  PCI_COMMAND,
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_MEMORY,
  type PciCapabilitySpec,
  PciConfigSpace,
  type PciFunctionSpec,
} from "../pci/config_space.ts";
import { formatPciAddr, type PciAddress, type PciFunction } from "../pci/pci_root.ts";
import { type GsiRoutingTarget, MsiRouting, msixCapability, MsixVectors } from "../pci/msix.ts";
import { signalEventfd } from "../pci/eventfd.ts";
import { QUEUE_WORDS, QueueRegs, VIRTIO_MSI_NO_VECTOR, VIRTQ_MAX_SIZE } from "./queue_state.ts";
import { type DescriptorChain, QueueError, Virtqueue } from "./queue.ts";
import {
  parseTransportState,
  TRANSPORT_STATE_MIN_VERSION,
  TRANSPORT_STATE_VERSION,
  type TransportState,
} from "./pci_transport_state.ts";
import { logger } from "../../util/log.ts";

/** Device status bits. */
export const STATUS_ACKNOWLEDGE = 1, STATUS_DRIVER = 2, STATUS_DRIVER_OK = 4, STATUS_FEATURES_OK = 8;
export const STATUS_NEEDS_RESET = 0x40, STATUS_FAILED = 0x80;
/** Transport feature bits. */
/** {@linkcode VirtioPciTransport.process} publishes the used index after this many chains (and at the end). */
const USED_PUBLISH_EVERY = 32;
/** What a queue handler returns for a chain it will complete later ({@linkcode VirtioPciTransport.complete}). */
export const CHAIN_DEFERRED = -1;
export const VIRTIO_F_INDIRECT_DESC = 28, VIRTIO_F_EVENT_IDX = 29, VIRTIO_F_VERSION_1 = 32;
/** ISR bits. */
export const ISR_QUEUE = 1, ISR_CONFIG = 2;
/** virtio PCI vendor id and the modern device id base (0x1040 + device type). */
export const VIRTIO_PCI_VENDOR_ID = 0x1af4, VIRTIO_PCI_DEVICE_ID_BASE = 0x1040;
/** Capability types (`cfg_type`). */
export const VIRTIO_PCI_CAP_COMMON_CFG = 1, VIRTIO_PCI_CAP_NOTIFY_CFG = 2, VIRTIO_PCI_CAP_ISR_CFG = 3;
export const VIRTIO_PCI_CAP_DEVICE_CFG = 4, VIRTIO_PCI_CAP_PCI_CFG = 5;

/** BAR0 layout. */
export const BAR_COMMON = 0x0000, BAR_ISR = 0x1000, BAR_DEVICE = 0x2000, BAR_NOTIFY = 0x3000;
export const BAR_MSIX_TABLE = 0x4000, BAR_MSIX_PBA = 0x5000, BAR_SIZE = 0x8000;
/** Bytes between two queues' notification addresses. */
export const NOTIFY_OFF_MULTIPLIER = 4;
/** Size of `struct virtio_pci_common_cfg` (virtio 1.1, without the 1.2 notify_data/reset fields). */
export const COMMON_CFG_BYTES = 0x38;
/** Largest device configuration. */
export const DEVICE_CONFIG_MAX = 256;

/** Common configuration offsets. */
export const CC_DFSELECT = 0x00, CC_DF = 0x04, CC_GFSELECT = 0x08, CC_GF = 0x0c, CC_MSIX = 0x10;
export const CC_NUMQ = 0x12, CC_STATUS = 0x14, CC_CFGGEN = 0x15, CC_Q_SELECT = 0x16, CC_Q_SIZE = 0x18;
export const CC_Q_MSIX = 0x1a, CC_Q_ENABLE = 0x1c, CC_Q_NOFF = 0x1e, CC_Q_DESC = 0x20, CC_Q_DRIVER = 0x28;
export const CC_Q_DEVICE = 0x30;

/** What a device tells the transport about itself (plain data). */
export interface VirtioDeviceInfo {
  /** virtio device type: 1 net, 2 block. */
  type: number;
  /** Maximum size of each queue. */
  queueSizes: number[];
  /** Feature bits the device offers (transport bits are added by the caller). */
  features: bigint;
  /** Initial device configuration bytes (≤ 256). */
  config: Uint8Array;
  /** Device-config bytes the driver may write (offset, length), e.g. virtio-blk's `writeback`. */
  writableConfig: Array<{ offset: number; length: number }>;
  /** PCI class code (class << 16 | subclass << 8 | prog-if). */
  pciClass: number;
}

/** Everything a thread needs to build its view of one virtio-pci function. Plain data. */
export interface VirtioPciPlan {
  /** Device id, e.g. `"virtio-blk/rootfs"`. */
  deviceId: string;
  busName: string;
  addr: PciAddress;
  info: VirtioDeviceInfo;
  configShared: SharedArrayBuffer;
  transportShared: SharedArrayBuffer;
  msixShared: SharedArrayBuffer;
  /** The VM-wide MSI route table. */
  routingShared: SharedArrayBuffer;
  msixVectors: number;
  /** GSI of MSI-X vector 0. */
  gsiBase: number;
  /** One irqfd per MSI-X vector (-1 when not wired, e.g. tests). */
  irqfds: number[];
  /** The INTx GSI and its irqfd (-1 when not wired). */
  intxGsi: number;
  intxFd: number;
  /** One eventfd per queue (notifications). */
  queueEventfds: number[];
  /** Guest address assigned to BAR0. */
  barGpa: number;
}

/** The VM operations the transport uses (a `VmFd`). */
export interface TransportVm extends GsiRoutingTarget {
  ioeventfd(opts: { addr: number; len: number; fd: number; pio: boolean; deassign?: boolean }): void;
}

/** Options for {@linkcode VirtioPciTransport}. */
export interface VirtioPciTransportOptions {
  plan: VirtioPciPlan;
  /** Guest RAM; needed where queues are processed (the I/O Worker) and for tests. */
  memory?: GuestMemory;
  /** The VM for routes and ioeventfds; without it (tests) they are not installed. */
  vm?: TransportVm;
  /** Test hook: replaces writing irqfds (`"intx"` or an MSI-X vector number). */
  fire?: (target: number | "intx") => void;
  /** Test hook: replaces signalling the queue eventfd on a notify write that reached userspace. */
  notify?: (queue: number) => void;
}

// Transport words.
const T_LOCK = 0, T_DFSEL = 1, T_GFSEL = 2, T_GF_LO = 3, T_GF_HI = 4, T_CFG_VECTOR = 5, T_STATUS = 6;
const T_CFGGEN = 7, T_QSEL = 8, T_ISR = 9, T_BUSY = 10, T_RESET_PENDING = 11, T_RESETS = 12;
const T_IOEV_ARMED = 13, T_IOEV_LO = 14, T_IOEV_HI = 15;
const T_QUEUES = 16;

/** The PCI function spec of a virtio device (same in every thread). */
export function virtioPciSpec(info: VirtioDeviceInfo, msixVectors: number): PciFunctionSpec {
  const cap = (type: number, offset: number, length: number, extra?: number): PciCapabilitySpec => {
    const bytes = new Uint8Array(extra === undefined ? 16 : 20);
    const dv = new DataView(bytes.buffer);
    bytes[2] = bytes.length;
    bytes[3] = type;
    bytes[4] = 0; // BAR 0
    dv.setUint32(8, offset, true);
    dv.setUint32(12, length, true);
    if (extra !== undefined) dv.setUint32(16, extra, true);
    return { id: 0x09, bytes };
  };
  // VIRTIO_PCI_CAP_PCI_CFG: an access window into the BARs through config space (spec §4.1.4.9);
  // the driver writes bar, offset and length, then reads or writes pci_cfg_data.
  const pciCfgCap = (): PciCapabilitySpec => {
    const c = cap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 0);
    const writeMask = new Uint8Array(20);
    writeMask[4] = 0xff;
    writeMask.fill(0xff, 8, 20);
    return { ...c, writeMask };
  };
  return {
    vendorId: VIRTIO_PCI_VENDOR_ID,
    deviceId: VIRTIO_PCI_DEVICE_ID_BASE + info.type,
    revisionId: 1,
    classCode: info.pciClass,
    subsystemVendorId: VIRTIO_PCI_VENDOR_ID,
    subsystemId: 0x1100,
    bars: [{ index: 0, sizeBytes: BAR_SIZE, is64: true, prefetchable: false }],
    interruptPin: 1,
    capabilities: [
      cap(VIRTIO_PCI_CAP_COMMON_CFG, BAR_COMMON, COMMON_CFG_BYTES),
      cap(VIRTIO_PCI_CAP_ISR_CFG, BAR_ISR, 4),
      cap(VIRTIO_PCI_CAP_DEVICE_CFG, BAR_DEVICE, Math.max(info.config.length, 4)),
      cap(
        VIRTIO_PCI_CAP_NOTIFY_CFG,
        BAR_NOTIFY,
        NOTIFY_OFF_MULTIPLIER * info.queueSizes.length,
        NOTIFY_OFF_MULTIPLIER,
      ),
      pciCfgCap(),
      msixCapability(msixVectors, 0, BAR_MSIX_TABLE, BAR_MSIX_PBA),
    ],
  };
}

/** Shared buffers for a new function (main thread). */
export function createTransportShared(info: VirtioDeviceInfo, msixVectors: number): {
  configShared: SharedArrayBuffer;
  transportShared: SharedArrayBuffer;
  msixShared: SharedArrayBuffer;
} {
  if (info.queueSizes.length < 1 || info.queueSizes.length > 64) {
    throw new RangeError(`Cannot create virtio transport with ${info.queueSizes.length} queues`);
  }
  for (const s of info.queueSizes) {
    if (s < 1 || s > VIRTQ_MAX_SIZE || (s & (s - 1)) !== 0) {
      throw new RangeError(`Cannot create virtio queue of size ${s}`);
    }
  }
  if (info.config.length > DEVICE_CONFIG_MAX) {
    throw new RangeError(`Cannot create virtio device config of ${info.config.length} bytes`);
  }
  const transportShared = new SharedArrayBuffer(
    4 * (T_QUEUES + QUEUE_WORDS * info.queueSizes.length) + DEVICE_CONFIG_MAX,
  );
  const w = new Int32Array(transportShared, 0, T_QUEUES + QUEUE_WORDS * info.queueSizes.length);
  w[T_CFG_VECTOR] = VIRTIO_MSI_NO_VECTOR;
  info.queueSizes.forEach((max, q) => {
    const r = new QueueRegs(w, T_QUEUES + QUEUE_WORDS * q);
    r.maxSize = max;
    r.reset();
  });
  new Uint8Array(transportShared, 4 * w.length, DEVICE_CONFIG_MAX).set(info.config);
  const spec = virtioPciSpec(info, msixVectors);
  return {
    configShared: PciConfigSpace.createShared(spec),
    transportShared,
    msixShared: MsixVectors.createShared(msixVectors),
  };
}

/** The PCI-side id of a function: `"pci/pcie.0/04.0"`. */
export function transportId(busName: string, addr: PciAddress): string {
  return `pci/${busName}/${formatPciAddr(addr)}`;
}

function u32(data: Uint8Array): number {
  let v = 0;
  for (let i = data.length - 1; i >= 0; i--) v = v * 256 + data[i]!;
  return v;
}

/** One thread's view of a virtio-pci function; see the module doc. */
export class VirtioPciTransport implements PciFunction, Migratable {
  /** Migration id `"pci/<bus>/<slot>.<fn>"`. */
  readonly id: string;
  readonly stateVersion: number = TRANSPORT_STATE_VERSION;
  readonly minStateVersion: number = TRANSPORT_STATE_MIN_VERSION;
  readonly plan: VirtioPciPlan;
  readonly config: PciConfigSpace;
  readonly msix: MsixVectors;
  /** The device's features including transport bits. */
  readonly deviceFeatures: bigint;
  readonly numQueues: number;
  readonly #w: Int32Array;
  readonly #devcfg: Uint8Array;
  readonly #queues: QueueRegs[];
  readonly #writable: Uint8Array;
  readonly #vm: TransportVm | undefined;
  readonly #memory: GuestMemory | undefined;
  readonly #fire: (target: number | "intx") => void;
  readonly #notify: (queue: number) => void;
  readonly #log;
  /** Offset of the VIRTIO_PCI_CAP_PCI_CFG capability in config space. */
  readonly #pciCfg: number;
  /** A BusDevice over BAR0 alone (for tests and for machines that map BARs themselves). */
  readonly bar0: BusDevice;

  constructor(options: VirtioPciTransportOptions) {
    const plan = options.plan;
    this.plan = plan;
    this.id = transportId(plan.busName, plan.addr);
    this.#log = logger(plan.deviceId);
    this.numQueues = plan.info.queueSizes.length;
    this.deviceFeatures = plan.info.features | (1n << BigInt(VIRTIO_F_VERSION_1));
    const spec = virtioPciSpec(plan.info, plan.msixVectors);
    this.config = new PciConfigSpace({
      shared: plan.configShared,
      spec,
      onBarsChanged: () => this.#barsChanged(),
      onWrite: (offset, data) => {
        this.msix.controlChanged();
        this.#cfgWindow(offset, data, true);
      },
      onRead: (offset, data) => this.#cfgWindow(offset, data, false),
    });
    this.#pciCfg =
      this.config.capabilities.find((c) =>
        c.id === 0x09 && this.config.readU16(c.offset + 2) >> 8 === VIRTIO_PCI_CAP_PCI_CFG
      )?.offset ?? -1;
    this.#vm = options.vm;
    this.#memory = options.memory;
    this.#fire = options.fire ?? ((t) => {
      const fd = t === "intx" ? plan.intxFd : plan.irqfds[t] ?? -1;
      if (fd >= 0) signalEventfd(fd);
    });
    this.#notify = options.notify ?? ((q) => {
      const fd = plan.queueEventfds[q] ?? -1;
      if (fd >= 0) signalEventfd(fd);
    });
    this.msix = new MsixVectors({
      shared: plan.msixShared,
      vectors: plan.msixVectors,
      config: this.config,
      gsiBase: plan.gsiBase,
      routing: new MsiRouting(plan.routingShared, options.vm),
      fire: (v) => this.#fire(v),
    });
    const words = T_QUEUES + QUEUE_WORDS * this.numQueues;
    this.#w = new Int32Array(plan.transportShared, 0, words);
    this.#devcfg = new Uint8Array(plan.transportShared, 4 * words, DEVICE_CONFIG_MAX);
    this.#queues = plan.info.queueSizes.map((_, q) => new QueueRegs(this.#w, T_QUEUES + QUEUE_WORDS * q));
    this.#writable = new Uint8Array(DEVICE_CONFIG_MAX);
    for (const r of plan.info.writableConfig) this.#writable.fill(1, r.offset, r.offset + r.length);
    this.bar0 = { read: (o, d) => this.readBar(0, o, d), write: (o, d) => this.writeBar(0, o, d) };
  }

  /** The PCI_CFG capability's data window: a config access at pci_cfg_data becomes a BAR access. */
  #cfgWindow(offset: number, data: Uint8Array, write: boolean): void {
    const cap = this.#pciCfg;
    if (cap < 0) return;
    const win = cap + 16;
    if (offset + data.length <= win || offset >= win + 4) return;
    const bar = this.config.readU16(cap + 4) & 0xff;
    const off = this.config.readU32(cap + 8), len = this.config.readU32(cap + 12);
    if (len !== 1 && len !== 2 && len !== 4) return;
    if (write) {
      if (offset !== win || data.length < len) return;
      this.writeBar(bar, off, data.subarray(0, len));
      return;
    }
    const tmp = new Uint8Array(len);
    this.readBar(bar, off, tmp);
    for (let i = 0; i < data.length; i++) {
      const k = offset + i - win;
      if (k >= 0 && k < len) data[i] = tmp[k]!;
    }
  }

  // ---- PciFunction ----

  readBar(bar: number, offset: number, data: Uint8Array): void {
    if (bar !== 0) return void data.fill(0xff);
    if (offset < BAR_ISR) return this.#readCommon(offset, data);
    if (offset < BAR_DEVICE) {
      data.fill(0);
      if (offset === BAR_ISR) data[0] = Atomics.exchange(this.#w, T_ISR, 0);
      return;
    }
    if (offset < BAR_NOTIFY) {
      const o = offset - BAR_DEVICE;
      for (let i = 0; i < data.length; i++) {
        data[i] = o + i < this.plan.info.config.length ? Atomics.load(this.#devcfg, o + i) : 0;
      }
      return;
    }
    if (offset < BAR_MSIX_TABLE) return void data.fill(0);
    if (offset < BAR_MSIX_PBA) return this.msix.readTable(offset - BAR_MSIX_TABLE, data);
    if (offset < BAR_SIZE) return this.msix.readPba(offset - BAR_MSIX_PBA, data);
    data.fill(0xff);
  }

  writeBar(bar: number, offset: number, data: Uint8Array): void {
    if (bar !== 0) return;
    if (offset < BAR_ISR) return this.#writeCommon(offset, data);
    if (offset < BAR_DEVICE) return;
    if (offset < BAR_NOTIFY) {
      const o = offset - BAR_DEVICE;
      for (let i = 0; i < data.length; i++) {
        if (o + i < DEVICE_CONFIG_MAX && this.#writable[o + i]) Atomics.store(this.#devcfg, o + i, data[i]!);
      }
      return;
    }
    if (offset < BAR_MSIX_TABLE) {
      const q = (offset - BAR_NOTIFY) / NOTIFY_OFF_MULTIPLIER;
      if (Number.isInteger(q) && q < this.numQueues) this.#notify(q);
      return;
    }
    if (offset < BAR_MSIX_PBA) return this.msix.writeTable(offset - BAR_MSIX_TABLE, data);
  }

  // ---- common configuration ----

  #commonImage(): Uint8Array {
    const img = new Uint8Array(0x40);
    const dv = new DataView(img.buffer);
    const w = this.#w;
    const dfsel = w[T_DFSEL]!;
    dv.setUint32(CC_DFSELECT, dfsel, true);
    dv.setUint32(
      CC_DF,
      dfsel < 2 ? Number((this.deviceFeatures >> BigInt(32 * dfsel)) & 0xffffffffn) : 0,
      true,
    );
    dv.setUint32(CC_GFSELECT, w[T_GFSEL]!, true);
    const gfsel = w[T_GFSEL]!;
    dv.setUint32(CC_GF, gfsel === 0 ? w[T_GF_LO]! >>> 0 : gfsel === 1 ? w[T_GF_HI]! >>> 0 : 0, true);
    dv.setUint16(CC_MSIX, w[T_CFG_VECTOR]!, true);
    dv.setUint16(CC_NUMQ, this.numQueues, true);
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

  #readCommon(offset: number, data: Uint8Array): void {
    lockShared(this.#w, T_LOCK);
    try {
      const img = this.#commonImage();
      for (let i = 0; i < data.length; i++) data[i] = offset + i < COMMON_CFG_BYTES ? img[offset + i]! : 0;
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
  }

  #writeCommon(offset: number, data: Uint8Array): void {
    if (offset + data.length > COMMON_CFG_BYTES) return;
    lockShared(this.#w, T_LOCK);
    try {
      this.#applyCommon(offset, data);
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
  }

  #applyCommon(offset: number, data: Uint8Array): void {
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
    return v !== VIRTIO_MSI_NO_VECTOR && v < this.msix.vectors ? v : VIRTIO_MSI_NO_VECTOR;
  }

  #writeStatus(value: number): void {
    const w = this.#w;
    if (value === 0) {
      if (w[T_BUSY]! > 0) w[T_RESET_PENDING] = 1;
      else this.#resetLocked();
      return;
    }
    let next = (value & ~STATUS_NEEDS_RESET) | (w[T_STATUS]! & STATUS_NEEDS_RESET);
    if (next & STATUS_FEATURES_OK && !(w[T_STATUS]! & STATUS_FEATURES_OK)) {
      const want = this.driverFeatures;
      if ((want & ~this.deviceFeatures) !== 0n || !(want & (1n << BigInt(VIRTIO_F_VERSION_1)))) {
        this.#log.warnLimited(
          "Refusing FEATURES_OK: driver features 0x%s are not a subset of 0x%s with VERSION_1",
          want.toString(16),
          this.deviceFeatures.toString(16),
        );
        next &= ~STATUS_FEATURES_OK;
      }
    }
    w[T_STATUS] = next;
  }

  #resetLocked(): void {
    const w = this.#w;
    for (const i of [T_DFSEL, T_GFSEL, T_GF_LO, T_GF_HI, T_STATUS, T_QSEL, T_ISR, T_RESET_PENDING]) w[i] = 0;
    w[T_CFG_VECTOR] = VIRTIO_MSI_NO_VECTOR;
    for (const q of this.#queues) q.reset();
    Atomics.add(w, T_RESETS, 1);
  }

  // ---- for the device / I/O Worker ----

  /** The driver's accepted features. */
  get driverFeatures(): bigint {
    return (BigInt(this.#w[T_GF_HI]! >>> 0) << 32n) | BigInt(this.#w[T_GF_LO]! >>> 0);
  }

  /** Whether feature `bit` was negotiated. */
  hasFeature(bit: number): boolean {
    return (this.driverFeatures & (1n << BigInt(bit))) !== 0n;
  }

  /** The device status byte. */
  get status(): number {
    return Atomics.load(this.#w, T_STATUS);
  }

  /** Completed driver resets so far (devices drop per-reset state when it changes). */
  get resetCount(): number {
    return Atomics.load(this.#w, T_RESETS);
  }

  /** Queue `q`'s registers. */
  queueRegs(q: number): QueueRegs {
    const r = this.#queues[q];
    if (!r) throw new RangeError(`Cannot use queue ${q} of ${this.plan.deviceId}: it has ${this.numQueues}`);
    return r;
  }

  /**
   * A {@linkcode Virtqueue} over queue `q` when it is ready for use (driver OK, enabled, not broken);
   * a bad ring marks the queue broken and the device NEEDS_RESET.
   */
  queue(q: number): Virtqueue | undefined {
    const regs = this.queueRegs(q);
    if (!this.#memory) {
      throw new TypeError(`Cannot process queues of ${this.plan.deviceId}: no guest memory in this thread`);
    }
    if (!(this.status & STATUS_DRIVER_OK) || !regs.enabled || regs.broken) return undefined;
    const vq = new Virtqueue({ memory: this.#memory, regs, eventIdx: this.hasFeature(VIRTIO_F_EVENT_IDX) });
    const why = vq.check();
    if (why) {
      this.markBroken(q, why);
      return undefined;
    }
    return vq;
  }

  /** Stops using queue `q`, sets NEEDS_RESET and tells the driver (config interrupt). */
  markBroken(q: number, why: string): void {
    this.#log.warnLimited("Queue %d is unusable, device needs reset: %s", q, why);
    this.queueRegs(q).broken = true;
    lockShared(this.#w, T_LOCK);
    try {
      this.#w[T_STATUS] = this.#w[T_STATUS]! | STATUS_NEEDS_RESET;
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
    this.signalConfig();
  }

  /**
   * Enters a processing pass (I/O Worker). Passes nest (a count): a device with requests in flight
   * holds one from the first submission to the last completion, so a driver reset waits for them.
   * @returns false when the device is not running (no DRIVER_OK, or a reset is pending): skip it
   */
  beginWork(): boolean {
    lockShared(this.#w, T_LOCK);
    try {
      if (this.#w[T_RESET_PENDING] === 1 || !(this.#w[T_STATUS]! & STATUS_DRIVER_OK)) return false;
      this.#w[T_BUSY] = this.#w[T_BUSY]! + 1;
      return true;
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
  }

  /** Leaves a processing pass; the last one out completes a reset the driver asked for meanwhile. */
  endWork(): void {
    lockShared(this.#w, T_LOCK);
    try {
      const busy = Math.max(0, this.#w[T_BUSY]! - 1);
      this.#w[T_BUSY] = busy;
      if (busy === 0 && this.#w[T_RESET_PENDING] === 1) this.#resetLocked();
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
  }

  /**
   * One processing pass over queue `q` (I/O Worker): takes chains while `handle` consumes them,
   * publishes the used ring, interrupts the driver if it asked for it. A chain with `error` is
   * returned with length 0 and a rate-limited warning, without reaching `handle`.
   * @param handle returns the byte count written into the chain, undefined to leave the chain
   *   on the ring and end the pass (e.g. no received frame to put in it), or
   *   {@linkcode CHAIN_DEFERRED} when the device completes it later with {@linkcode complete}
   * @param budget chains per pass, so one busy queue cannot starve the others
   * @param pollUs after the ring ran dry, keep the driver's notifications off and poll it this
   *   long for more chains (a driver streaming chains then needs no notify exit for each)
   * @returns "more" when the budget ran out with chains still pending
   */
  process(
    q: number,
    handle: (chain: DescriptorChain) => number | undefined,
    budget = 256,
    pollUs = 0,
  ): "idle" | "more" {
    if (!this.beginWork()) return "idle";
    try {
      const vq = this.queue(q);
      if (!vq) return "idle";
      let result: "idle" | "more" = "idle";
      try {
        let n = 0, stop = false;
        vq.disableNotification();
        do {
          while (!stop) {
            if (n >= budget) {
              result = "more";
              stop = true;
              break;
            }
            const chain = vq.pop();
            if (!chain) break;
            n++;
            if (chain.error !== undefined) {
              this.#log.warnLimited("Queue %d: returning a bad descriptor chain: %s", q, chain.error);
              vq.pushUsed(chain.head, 0);
              continue;
            }
            const used = handle(chain);
            if (used === undefined) {
              vq.regs.nextAvail = vq.regs.nextAvail - 1; // leave the chain on the ring
              vq.enableNotification();
              stop = true;
              break;
            }
            if (used !== CHAIN_DEFERRED) {
              vq.pushUsed(chain.head, used);
              // Publish as we go, so a driver waiting for buffers refills while the rest is served.
              if (n % USED_PUBLISH_EVERY === 0) vq.flushUsed();
            }
          }
          vq.flushUsed();
          if (!stop && pollUs > 0 && this.#poll(q, vq, pollUs)) continue;
        } while (!stop && vq.enableNotification());
      } catch (e) {
        if (!(e instanceof QueueError)) throw e;
        vq.flushUsed();
        this.markBroken(q, e.message);
      }
      if (vq.needsInterrupt()) this.signalQueue(q);
      return result;
    } finally {
      this.endWork();
    }
  }

  /** Waits up to `us` microseconds, notifications still off, for the driver to add a chain. */
  #poll(q: number, vq: Virtqueue, us: number): boolean {
    if (vq.needsInterrupt()) this.signalQueue(q); // what is done so far is not held back
    const end = performance.now() + us / 1000;
    do {
      if (vq.pending() > 0) return true;
    } while (performance.now() < end);
    return false;
  }

  /**
   * Completes chains the device took with {@linkcode CHAIN_DEFERRED} (I/O Worker), in any order:
   * puts `n` pairs (head, bytes written) from `pairs` on the used ring, publishes it and
   * interrupts the driver if it asked for it. Nothing happens when the device is not running
   * (a reset dropped the chains).
   */
  complete(q: number, pairs: Uint32Array, n: number): void {
    if (n === 0 || !this.beginWork()) return;
    try {
      const vq = this.queue(q);
      if (!vq) return;
      for (let i = 0; i < n; i++) vq.pushUsed(pairs[2 * i]!, pairs[2 * i + 1]!);
      vq.flushUsed();
      if (vq.needsInterrupt()) this.signalQueue(q);
    } finally {
      this.endWork();
    }
  }

  /** Interrupts the driver for queue `q` (MSI-X vector, or ISR + INTx). */
  signalQueue(q: number): void {
    if (this.msix.enabled) {
      const v = this.queueRegs(q).vector;
      if (v !== VIRTIO_MSI_NO_VECTOR) this.msix.signal(v);
      return;
    }
    Atomics.or(this.#w, T_ISR, ISR_QUEUE);
    this.#intx();
  }

  /** Interrupts the driver for a configuration change. */
  signalConfig(): void {
    Atomics.or(this.#w, T_ISR, ISR_CONFIG);
    if (this.msix.enabled) {
      const v = Atomics.load(this.#w, T_CFG_VECTOR) & 0xffff;
      if (v !== VIRTIO_MSI_NO_VECTOR) this.msix.signal(v);
      return;
    }
    this.#intx();
  }

  #intx(): void {
    if (this.config.readU16(PCI_COMMAND) & PCI_COMMAND_INTX_DISABLE) return;
    this.#fire("intx");
  }

  /** Reads device configuration bytes (device side). */
  readDeviceConfig(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = Atomics.load(this.#devcfg, offset + i);
    return out;
  }

  /**
   * Changes device configuration bytes (device side); bumps the generation.
   * @param notify also raise a configuration-change interrupt (only once the driver is running)
   */
  writeDeviceConfig(offset: number, bytes: Uint8Array, notify: boolean): void {
    for (let i = 0; i < bytes.length; i++) Atomics.store(this.#devcfg, offset + i, bytes[i]!);
    Atomics.add(this.#w, T_CFGGEN, 1);
    Atomics.and(this.#w, T_CFGGEN, 0xff);
    if (notify && this.status & STATUS_DRIVER_OK) this.signalConfig();
  }

  // ---- ioeventfds ----

  /**
   * Binds each queue's notification address to its eventfd with `KVM_IOEVENTFD` (main thread,
   * after BAR assignment) and keeps the binding following BAR moves from then on.
   */
  armIoeventfds(): void {
    lockShared(this.#w, T_LOCK);
    try {
      this.#w[T_IOEV_ARMED] = 1;
      this.#rebindLocked();
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
  }

  /** Removes the bindings (teardown). */
  disarmIoeventfds(): void {
    lockShared(this.#w, T_LOCK);
    try {
      this.#bind(this.#boundGpa(), false);
      this.#setBound(0);
      this.#w[T_IOEV_ARMED] = 0;
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
  }

  /** Where the notification area is bound now (0: nowhere). */
  get ioeventfdGpa(): number {
    return this.#boundGpa();
  }

  #boundGpa(): number {
    return (this.#w[T_IOEV_HI]! >>> 0) * 2 ** 32 + (this.#w[T_IOEV_LO]! >>> 0);
  }

  #setBound(gpa: number): void {
    this.#w[T_IOEV_LO] = gpa % 2 ** 32;
    this.#w[T_IOEV_HI] = Math.floor(gpa / 2 ** 32);
  }

  #barsChanged(): void {
    lockShared(this.#w, T_LOCK);
    try {
      if (this.#w[T_IOEV_ARMED] === 1) this.#rebindLocked();
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
  }

  #rebindLocked(): void {
    const now = this.config.decodedBars()[0] ?? 0;
    const old = this.#boundGpa();
    if (now === old) return;
    this.#bind(old, false);
    this.#bind(now, true);
    this.#setBound(now);
  }

  #bind(bar: number, assign: boolean): void {
    if (bar === 0 || !this.#vm) return;
    this.plan.queueEventfds.forEach((fd, q) => {
      if (fd < 0) return;
      this.#vm!.ioeventfd({
        addr: bar + BAR_NOTIFY + q * NOTIFY_OFF_MULTIPLIER,
        len: 2,
        fd,
        pio: false,
        deassign: !assign,
      });
    });
  }

  // ---- machine reset and migration ----

  /**
   * Firmware's part (ferry boots without firmware): puts BAR0 at the planned address and turns
   * memory decode on, so a guest that does not assign BARs (the probe guest) finds the device ready.
   */
  assignBar(): void {
    this.config.setBarAddress(0, this.plan.barGpa);
    const cmd = this.config.command | PCI_COMMAND_MEMORY;
    this.config.setRaw(PCI_COMMAND, Uint8Array.of(cmd & 0xff, cmd >> 8));
  }

  /** Machine reset: config space back to power-on with the planned BAR, MSI-X masked, virtio reset. */
  reset(): void {
    this.config.reset();
    this.assignBar();
    this.msix.reset();
    lockShared(this.#w, T_LOCK);
    try {
      this.#resetLocked();
      this.#devcfg.fill(0);
      this.#devcfg.set(this.plan.info.config);
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
    this.#barsChanged(); // the guest may have moved the BAR: bring the ioeventfds back
  }

  /** Plain snapshot (VM paused, I/O Worker quiesced). */
  save(): StateValue {
    lockShared(this.#w, T_LOCK);
    try {
      const w = this.#w;
      const { table, pba } = this.msix.save();
      const s: TransportState = {
        config: this.config.save(),
        status: w[T_STATUS]!,
        deviceFeatureSelect: w[T_DFSEL]! >>> 0,
        driverFeatureSelect: w[T_GFSEL]! >>> 0,
        driverFeaturesLo: w[T_GF_LO]! >>> 0,
        driverFeaturesHi: w[T_GF_HI]! >>> 0,
        configVector: w[T_CFG_VECTOR]!,
        configGeneration: w[T_CFGGEN]!,
        queueSelect: w[T_QSEL]!,
        isr: w[T_ISR]!,
        queues: this.#queues.map((q) => q.save()),
        msixTable: table,
        msixPba: pba,
      };
      return s;
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
  }

  /**
   * Validates then applies; installs MSI routes and rebinds ioeventfds at the restored BAR.
   * @throws {TypeError | RangeError} naming the field; nothing is changed then
   */
  restore(state: StateValue, version: number): void {
    const s = parseTransportState(this, state, version);
    this.config.restore(s.config);
    lockShared(this.#w, T_LOCK);
    try {
      const w = this.#w;
      w[T_STATUS] = s.status;
      w[T_DFSEL] = s.deviceFeatureSelect;
      w[T_GFSEL] = s.driverFeatureSelect;
      w[T_GF_LO] = s.driverFeaturesLo;
      w[T_GF_HI] = s.driverFeaturesHi;
      w[T_CFG_VECTOR] = s.configVector;
      w[T_CFGGEN] = s.configGeneration;
      w[T_QSEL] = s.queueSelect;
      w[T_ISR] = s.isr;
      w[T_BUSY] = 0;
      w[T_RESET_PENDING] = 0;
      s.queues.forEach((q, i) => this.#queues[i]!.restore(q));
      if (w[T_IOEV_ARMED] === 1) this.#rebindLocked();
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
    this.msix.restore(s.msixTable, s.msixPba);
  }
}
