/**
 * Assembly of ferry's PCI devices for the machine: the root bus `pcie.0`, virtio-blk-pci and
 * virtio-net-pci functions on it, their KVM wiring (irqfds, MSI routes, ioeventfds), the plans the
 * vCPU Workers and the I/O Worker build their views from, and the migration faces.
 *
 * @example
 * ```ts
 * const pci = new VirtioPciDevices({ vm });                        // host bridge at 00.0
 * pci.addBlock({ id: "rootfs", file: "disk.img", readonly: false, direct: false }, { addr: { slot: 4, fn: 0 } });
 * pci.addNet({ id: "net0", ifname: "tap0", mac: Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56) }, { addr: { slot: 5, fn: 0 } });
 * pci.wireKvm();                                                   // irqfds, routes, ioeventfds
 * // each thread's buses (platform.ts): registerPciBuses(buildPciRoot(plan, VmFd.fromRawFd(fd)).root, pio, mmio)
 * const io = await IoControl.start({ plan: pci.ioPlan(memory.layout) }); io.resume();
 * migration: pci.migratables() (transports, then devices); pci.onSwitchover()/onRollback()/beforeResume()
 * ```
 * @module
 */
import type { Migratable } from "../devices/device.ts";
import type { MemoryLayout } from "../memory/guest_memory.ts";
import type { IoDevicePlan, IoPlan } from "../devices/virtio/io_plan.ts";
import { IOAPIC_GPA, PCI_HOLE_START, PCIE_ECAM_BYTES, PCIE_ECAM_GPA } from "./boot/layout.ts";
import { MsiRouting } from "../devices/pci/msix.ts";
import { createEventfd } from "../sys/eventfd.ts";
import { pciSlotName } from "../devices/pci/pci_address.ts";
import {
  PCI_CONFIG_ADDRESS_PORT,
  PCI_CONFIG_DATA_PORT,
  type PciAddress,
  PciRoot,
} from "../devices/pci/pci_root.ts";
import {
  createTransportShared,
  type TransportVm,
  type VirtioDeviceInfo,
  type VirtioPciPlan,
  virtioPciSpec,
  VirtioPciTransport,
} from "../devices/virtio/pci_transport.ts";
import { blockDeviceId, type DriveConfig, VirtioBlk } from "../devices/virtio/block/block.ts";
import { formatMac, type NetConfig, netDeviceId, VirtioNet } from "../devices/virtio/net/net.ts";
import type { BlockImageOptions } from "../devices/virtio/block/image.ts";

/** pcie.0's windows, from the one q35 memory map (`boot/layout.ts`): ECAM, and BARs up to the IOAPIC. */
const Q35_PCI_WINDOWS = {
  ecam: { base: PCIE_ECAM_GPA, sizeBytes: PCIE_ECAM_BYTES },
  window: { base: PCI_HOLE_START, sizeBytes: IOAPIC_GPA - PCI_HOLE_START },
};

/** One function as the vCPU Workers see it. Plain data. */
export interface PciPlan {
  rootShared: SharedArrayBuffer;
  routingShared: SharedArrayBuffer;
  busName: string;
  vmFd: number;
  functions: VirtioPciPlan[];
}

/** A PCI root over plan data in this thread (vCPU Worker), with every function attached. */
export function buildPciRoot(
  plan: PciPlan,
  vm?: TransportVm,
): { root: PciRoot; transports: VirtioPciTransport[] } {
  const root = new PciRoot({ ...Q35_PCI_WINDOWS, shared: plan.rootShared, busName: plan.busName });
  const transports = plan.functions.map((f) => {
    const t = new VirtioPciTransport({ plan: f, ...(vm ? { vm } : {}) });
    root.attach(f.addr, t);
    return t;
  });
  return { root, transports };
}

/** Registers a root's config ports, ECAM and BAR window on one thread's buses. */
export function registerPciBuses(
  root: PciRoot,
  pio: { register(base: number, length: number, device: PciRoot["ecam"], id: string): void },
  mmio: { register(base: number, length: number, device: PciRoot["ecam"], id: string): void },
): void {
  pio.register(PCI_CONFIG_ADDRESS_PORT, 1, root.configAddressPort, "pci:cf8");
  pio.register(PCI_CONFIG_DATA_PORT, 4, root.configDataPort, "pci:cfc");
  mmio.register(root.ecamWindow.base, root.ecamWindow.sizeBytes, root.ecam, "pci:ecam");
  mmio.register(root.window.base, root.window.sizeBytes, root.barWindow, "pci:bars");
}

/** The KVM calls the assembly makes (a `VmFd`). */
export interface PciVm extends TransportVm {
  irqfd(opts: { fd: number; gsi: number; deassign?: boolean }): void;
}

interface Entry {
  transport: VirtioPciTransport;
  device: VirtioBlk | VirtioNet;
  type: "virtio-blk-pci" | "virtio-net-pci";
}

/** The machine's PCI devices (main thread); see the module doc. */
export class VirtioPciDevices {
  readonly root: PciRoot;
  readonly routing: MsiRouting;
  readonly #rootShared: SharedArrayBuffer;
  readonly #routingShared: SharedArrayBuffer;
  readonly #vm: PciVm | undefined;
  readonly #vmFd: number;
  readonly #entries: Entry[] = [];
  #wired = false;

  /**
   * @param options.vm the VM (omit in tests: no eventfds, routes or irqfds are made)
   * @param options.vmFd its fd number, for Worker plans (default `vm.fd` when it has one)
   */
  constructor(options: { vm?: PciVm & { fd?: number }; busName?: string } = {}) {
    this.#rootShared = PciRoot.createShared();
    this.#routingShared = MsiRouting.createShared();
    this.#vm = options.vm;
    this.#vmFd = options.vm?.fd ?? -1;
    this.root = new PciRoot({
      ...Q35_PCI_WINDOWS,
      shared: this.#rootShared,
      ...(options.busName ? { busName: options.busName } : {}),
    });
    this.routing = new MsiRouting(this.#routingShared, options.vm);
  }

  #plan(deviceId: string, info: VirtioDeviceInfo, addr: PciAddress): VirtioPciPlan {
    const vectors = info.queueSizes.length + 1;
    const spec = virtioPciSpec(info, vectors);
    const [barGpa] = this.root.allocateBars(deviceId, spec.bars);
    const kvm = this.#vm !== undefined;
    return {
      deviceId,
      busName: this.root.busName,
      addr,
      info,
      ...createTransportShared(info, vectors),
      routingShared: this.#routingShared,
      msixVectors: vectors,
      gsiBase: this.routing.allocate(vectors),
      irqfds: Array.from(
        { length: vectors },
        (_, v) => kvm ? createEventfd(`vector ${v} of ${deviceId}`) : -1,
      ),
      intxGsi: this.root.intxGsi(addr),
      intxFd: kvm ? createEventfd(`INTx of ${deviceId}`) : -1,
      queueEventfds: info.queueSizes.map((_, q) => kvm ? createEventfd(`queue ${q} of ${deviceId}`) : -1),
      barGpa: barGpa!,
    };
  }

  #add(device: VirtioBlk | VirtioNet, type: Entry["type"], addr: PciAddress): VirtioPciTransport {
    const plan = this.#plan(device.id, device.info, addr);
    const transport = new VirtioPciTransport({ plan, ...(this.#vm ? { vm: this.#vm } : {}) });
    transport.assignBar();
    this.root.attach(plan.addr, transport);
    device.attach(transport);
    this.#entries.push({ transport, device, type });
    return transport;
  }

  /**
   * Adds a virtio-blk-pci function for a drive (opens and locks the image).
   * @param device.addr `addr=SLOT[.FN]`; the first free slot when absent
   * @param device.lock `"deferred"` on an incoming migration's destination
   */
  addBlock(
    drive: DriveConfig,
    device: { addr?: PciAddress; lock?: BlockImageOptions["lock"] } = {},
  ): VirtioBlk {
    // Placement first: a bad address is reported before the image is opened and locked.
    const addr = this.root.place(blockDeviceId(drive.id), device.addr);
    let blk: VirtioBlk | undefined;
    try {
      blk = new VirtioBlk({ drive, ...(device.lock ? { lock: device.lock } : {}) });
      this.#add(blk, "virtio-blk-pci", addr);
    } catch (e) {
      blk?.close();
      this.root.unplace(addr);
      throw e;
    }
    return blk;
  }

  /** Adds a virtio-net-pci function on a tap (opens the tap). */
  addNet(config: NetConfig, device: { addr?: PciAddress } = {}): VirtioNet {
    const addr = this.root.place(netDeviceId(config.id), device.addr);
    let net: VirtioNet | undefined;
    try {
      net = new VirtioNet({ config });
      this.#add(net, "virtio-net-pci", addr);
    } catch (e) {
      net?.close();
      this.root.unplace(addr);
      throw e;
    }
    return net;
  }

  /**
   * Binds every vector's irqfd and each INTx irqfd to its GSI, installs the routing table and
   * binds the notification addresses with ioeventfds. Call once, after adding every device.
   */
  wireKvm(): void {
    this.root.validate();
    if (!this.#vm || this.#wired) return;
    this.#wired = true;
    this.routing.commit();
    for (const { transport } of this.#entries) {
      const p = transport.plan;
      p.irqfds.forEach((fd, v) => this.#vm!.irqfd({ fd, gsi: p.gsiBase + v }));
      this.#vm.irqfd({ fd: p.intxFd, gsi: p.intxGsi });
      transport.armIoeventfds();
    }
  }

  /** Plain data for vCPU Workers: `buildPciRoot(plan, VmFd.fromRawFd(plan.vmFd))`. */
  pciPlan(): PciPlan {
    return {
      rootShared: this.#rootShared,
      routingShared: this.#routingShared,
      busName: this.root.busName,
      vmFd: this.#vmFd,
      functions: this.#entries.map((e) => e.transport.plan),
    };
  }

  /** Plain data for the I/O Worker. */
  ioPlan(memory: MemoryLayout): IoPlan {
    return {
      memory,
      vmFd: this.#vmFd,
      devices: this.#entries.map((e): IoDevicePlan =>
        e.device instanceof VirtioBlk
          ? { kind: "virtio-blk", transport: e.transport.plan, block: e.device.backendPlan() }
          : { kind: "virtio-net", transport: e.transport.plan, net: e.device.backendPlan() }
      ),
    };
  }

  /** Transports first, then devices (restore order: STYLE.md c.9). */
  migratables(): Migratable[] {
    return [...this.#entries.map((e) => e.transport), ...this.#entries.map((e) => e.device)];
  }

  /** The block devices. */
  blocks(): VirtioBlk[] {
    return this.#entries.flatMap((e) => e.device instanceof VirtioBlk ? [e.device] : []);
  }

  /** The NICs. */
  nics(): VirtioNet[] {
    return this.#entries.flatMap((e) => e.device instanceof VirtioNet ? [e.device] : []);
  }

  /**
   * Attributes that must match between migration source and destination (config digest):
   * per device its type, bus address and identity (read-only, serial, image size, MAC). Image paths
   * are left out: a shared image may be mounted at another path on the destination.
   */
  configAttributes(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const { transport, device, type } of this.#entries) {
      const k = `device ${device.id}`;
      out[`${k}: type`] = type;
      out[`${k}: addr`] = `${this.root.busName}/${pciSlotName(transport.plan.addr)}`;
      if (device instanceof VirtioBlk) {
        out[`${k}: readonly`] = String(device.image.readonly);
        out[`${k}: serial`] = new TextDecoder().decode(device.serial);
        out[`${k}: sectors`] = String(device.image.capacitySectors);
      } else {
        out[`${k}: mac`] = formatMac(device.info.config.subarray(0, 6));
      }
    }
    return out;
  }

  /** Source at switchover (VM and I/O paused): flush and release every image lock. */
  onSwitchover(): void {
    for (const b of this.blocks()) b.releaseLock();
  }

  /** Source after a failed migration, or destination before resuming: take the image locks. */
  acquireLocks(): void {
    for (const b of this.blocks()) b.acquireLock();
  }

  /** Destination after resuming: announce every NIC (guest announce + RARP rounds). */
  async announce(): Promise<void> {
    await Promise.all(
      this.nics().map((n) => {
        n.announce();
        return n.selfAnnounce();
      }),
    );
  }

  /** Machine reset: every function back to power-on (BARs re-assigned). */
  reset(): void {
    for (const { transport } of this.#entries) transport.reset();
  }

  /** Closes images and taps (ioeventfds are unbound; eventfds closed with the VM). */
  close(): void {
    for (const { transport, device } of this.#entries) {
      if (this.#wired) transport.disarmIoeventfds();
      device.close();
    }
  }
}
