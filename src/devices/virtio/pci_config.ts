/**
 * A virtio-pci function as PCI config space sees it: what a device tells the transport about
 * itself ({@linkcode VirtioDeviceInfo}), the plan every thread builds its view from
 * ({@linkcode VirtioPciPlan}), the function's spec (ids, BAR0, the vendor capabilities that
 * announce each BAR0 region, MSI-X), its shared buffers, and the `VIRTIO_PCI_CAP_PCI_CFG`
 * window through which a driver can reach BAR0 with config accesses (spec §4.1.4.9).
 * @module
 */
import { type PciCapabilitySpec, PciConfigSpace, type PciFunctionSpec } from "../pci/config_space.ts";
import { type PciAddress, pciSlotName } from "../pci/pci_address.ts";
import { msixCapability, MsixVectors } from "../pci/msix.ts";
import { QUEUE_WORDS, QueueRegs, VIRTIO_MSI_NO_VECTOR, VIRTQ_MAX_SIZE } from "./queue_state.ts";
import {
  BAR_COMMON,
  BAR_DEVICE,
  BAR_ISR,
  BAR_MSIX_PBA,
  BAR_MSIX_TABLE,
  BAR_NOTIFY,
  BAR_SIZE,
  COMMON_CFG_BYTES,
  DEVICE_CONFIG_MAX,
  NOTIFY_OFF_MULTIPLIER,
  T_CFG_VECTOR,
  T_QUEUES,
  VIRTIO_PCI_CAP_COMMON_CFG,
  VIRTIO_PCI_CAP_DEVICE_CFG,
  VIRTIO_PCI_CAP_ISR_CFG,
  VIRTIO_PCI_CAP_NOTIFY_CFG,
  VIRTIO_PCI_CAP_PCI_CFG,
  VIRTIO_PCI_DEVICE_ID_BASE,
  VIRTIO_PCI_VENDOR_ID,
} from "./virtio_pci_regs.ts";

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
  return `pci/${busName}/${pciSlotName(addr)}`;
}

/** BAR accesses, as the PCI_CFG window forwards them. */
export interface BarAccess {
  readBar(bar: number, offset: number, data: Uint8Array): void;
  writeBar(bar: number, offset: number, data: Uint8Array): void;
}

/** The `VIRTIO_PCI_CAP_PCI_CFG` window: a config access at `pci_cfg_data` becomes a BAR access. */
export class PciCfgWindow {
  readonly #config: PciConfigSpace;
  readonly #bars: BarAccess;
  /** Offset of the capability in config space (-1: none). */
  readonly #cap: number;

  constructor(config: PciConfigSpace, bars: BarAccess) {
    this.#config = config;
    this.#bars = bars;
    this.#cap =
      config.capabilities.find((c) =>
        c.id === 0x09 && config.readU16(c.offset + 2) >> 8 === VIRTIO_PCI_CAP_PCI_CFG
      )?.offset ?? -1;
  }

  /** A config-space access at `offset` (after the config space handled it). */
  access(offset: number, data: Uint8Array, write: boolean): void {
    const cap = this.#cap;
    if (cap < 0) return;
    const win = cap + 16;
    if (offset + data.length <= win || offset >= win + 4) return;
    const bar = this.#config.readU16(cap + 4) & 0xff;
    const off = this.#config.readU32(cap + 8), len = this.#config.readU32(cap + 12);
    if (len !== 1 && len !== 2 && len !== 4) return;
    if (write) {
      if (offset !== win || data.length < len) return;
      this.#bars.writeBar(bar, off, data.subarray(0, len));
      return;
    }
    const tmp = new Uint8Array(len);
    this.#bars.readBar(bar, off, tmp);
    for (let i = 0; i < data.length; i++) {
      const k = offset + i - win;
      if (k >= 0 && k < len) data[i] = tmp[k]!;
    }
  }
}
