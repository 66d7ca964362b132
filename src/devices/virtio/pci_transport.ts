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
 *
 * The parts, one concept each: virtio_pci_regs.ts (the register map), pci_config.ts (the
 * function in config space, its plan and the PCI_CFG window), common_cfg.ts (the common
 * configuration region), this file (BAR0 dispatch: the ISR, device-config and notify regions,
 * MSI-X; interrupts; device-side access; reset and migration), queue_processing.ts (passes over
 * a queue) and ioeventfds.ts (the notify bindings).
 * @module
 */
import type { BusDevice, Migratable, StateValue } from "../device.ts";
import type { GuestMemory } from "../../memory/guest_memory.ts";
import { lockShared, unlockShared } from "../shared_lock.ts";
import {
  PCI_COMMAND,
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_MEMORY,
  PciConfigSpace,
} from "../pci/config_space.ts";
import type { PciFunction } from "../pci/pci_root.ts";
import { type GsiRoutingTarget, MsiRouting, MsixVectors } from "../pci/msix.ts";
import { signalEventfd } from "../../sys/eventfd.ts";
import { QUEUE_WORDS, QueueRegs, VIRTIO_MSI_NO_VECTOR } from "./queue_state.ts";
import { type DescriptorChain, Virtqueue } from "./queue.ts";
import {
  parseTransportState,
  TRANSPORT_STATE_MIN_VERSION,
  TRANSPORT_STATE_VERSION,
  type TransportState,
} from "./pci_transport_state.ts";
import { logger } from "../../util/log.ts";
import {
  BAR_DEVICE,
  BAR_ISR,
  BAR_MSIX_PBA,
  BAR_MSIX_TABLE,
  BAR_NOTIFY,
  BAR_SIZE,
  DEVICE_CONFIG_MAX,
  ISR_CONFIG,
  ISR_QUEUE,
  NOTIFY_OFF_MULTIPLIER,
  STATUS_DRIVER_OK,
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
  T_QUEUES,
  T_RESET_PENDING,
  T_RESETS,
  T_STATUS,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_VERSION_1,
} from "./virtio_pci_regs.ts";
import { PciCfgWindow, transportId, type VirtioPciPlan, virtioPciSpec } from "./pci_config.ts";
import { CommonConfig } from "./common_cfg.ts";
import { completeChains, processQueue } from "./queue_processing.ts";
import { IoeventfdBinding } from "./ioeventfds.ts";

// The transport's parts are re-exported: users import the transport from here.
export * from "./virtio_pci_regs.ts";
export {
  createTransportShared,
  transportId,
  type VirtioDeviceInfo,
  type VirtioPciPlan,
  virtioPciSpec,
} from "./pci_config.ts";
export { CHAIN_DEFERRED, CHAIN_WAIT_SOURCE } from "./queue_processing.ts";

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
  /** Checked views of the queues, reused while their registers stay the same ({@linkcode queue}). */
  readonly #views: (Virtqueue | undefined)[] = [];
  readonly #writable: Uint8Array;
  readonly #vm: TransportVm | undefined;
  readonly #memory: GuestMemory | undefined;
  readonly #fire: (target: number | "intx") => void;
  readonly #notify: (queue: number) => void;
  readonly #log;
  readonly #cfgWindow: PciCfgWindow;
  readonly #common: CommonConfig;
  readonly #ioev: IoeventfdBinding;
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
      onBarsChanged: () => this.#ioev.barsChanged(),
      onWrite: (offset, data) => {
        this.msix.controlChanged();
        this.#cfgWindow.access(offset, data, true);
      },
      onRead: (offset, data) => this.#cfgWindow.access(offset, data, false),
    });
    this.#cfgWindow = new PciCfgWindow(this.config, this);
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
    this.#common = new CommonConfig({
      words: this.#w,
      queues: this.#queues,
      deviceFeatures: this.deviceFeatures,
      msixVectors: this.msix.vectors,
      log: this.#log,
    });
    this.#ioev = new IoeventfdBinding(this.#w, this.config, plan.queueEventfds, options.vm);
    this.bar0 = { read: (o, d) => this.readBar(0, o, d), write: (o, d) => this.writeBar(0, o, d) };
  }

  // ---- PciFunction ----

  readBar(bar: number, offset: number, data: Uint8Array): void {
    if (bar !== 0) return void data.fill(0xff);
    if (offset < BAR_ISR) return this.#common.read(offset, data);
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
    if (offset < BAR_ISR) return this.#common.write(offset, data);
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

  // ---- for the device / I/O Worker ----

  /** The driver's accepted features. */
  get driverFeatures(): bigint {
    return this.#common.driverFeatures;
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
    const eventIdx = this.hasFeature(VIRTIO_F_EVENT_IDX);
    // A checked view is reused while the registers still say the same (no allocation per pass).
    const cached = this.#views[q];
    if (cached?.matches(eventIdx)) return cached;
    const vq = new Virtqueue({ memory: this.#memory, regs, eventIdx });
    const why = vq.check();
    if (why) {
      this.#views[q] = undefined;
      this.markBroken(q, why);
      return undefined;
    }
    this.#views[q] = vq;
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
      if (busy === 0 && this.#w[T_RESET_PENDING] === 1) this.#common.resetLocked();
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
   *   {@linkcode CHAIN_DEFERRED} when the device completes it later with {@linkcode complete}, or
   *   {@linkcode CHAIN_WAIT_SOURCE} like undefined but leaving the driver's notifications off
   * @param budget chains per pass, so one busy queue cannot starve the others
   * @param pollUs after the ring ran dry, keep the driver's notifications off and poll it this
   *   long for more chains (a driver streaming chains then needs no notify exit for each); a function is
   *   asked each time the ring runs dry (a device may poll longer before the first chain than after)
   * @param onPoll called while polling (e.g. to reap completions); true when it did something
   * @returns "more" when the budget ran out with chains still pending
   */
  process(
    q: number,
    handle: (chain: DescriptorChain) => number | undefined,
    budget = 256,
    pollUs: number | (() => number) = 0,
    onPoll?: () => boolean,
  ): "idle" | "more" {
    return processQueue(this, this.#log, q, handle, budget, pollUs, onPoll);
  }

  /**
   * Completes chains the device took with {@linkcode CHAIN_DEFERRED} (I/O Worker), in any order:
   * puts `n` pairs (head, bytes written) from `pairs` on the used ring, publishes it and
   * interrupts the driver if it asked for it. Nothing happens when the device is not running
   * (a reset dropped the chains).
   * @param publishEvery publish the used index after every this many entries too (a polling driver
   *   starts on the first ones while the rest are put on the ring)
   */
  complete(q: number, pairs: Uint32Array, n: number, publishEvery = n): void {
    completeChains(this, q, pairs, n, publishEvery);
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
    this.#ioev.arm();
  }

  /** Removes the bindings (teardown). */
  disarmIoeventfds(): void {
    this.#ioev.disarm();
  }

  /** Where the notification area is bound now (0: nowhere). */
  get ioeventfdGpa(): number {
    return this.#ioev.gpa;
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
      this.#common.resetLocked();
      this.#devcfg.fill(0);
      this.#devcfg.set(this.plan.info.config);
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
    this.#ioev.barsChanged(); // the guest may have moved the BAR: bring the ioeventfds back
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
      this.#ioev.rebindLockedIfArmed();
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
    this.msix.restore(s.msixTable, s.msixPba);
  }
}
