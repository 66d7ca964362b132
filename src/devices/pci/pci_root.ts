/**
 * The q35 PCI Express root bus `pcie.0`: configuration access through the legacy mechanism
 * (0xCF8 address, 0xCFC..0xCFF data) and ECAM (MMCONFIG, 256 buses × 1 MiB; the machine's memory map
 * places it and the BAR window), the
 * Intel Q35 host bridge at 00.0 (8086:29c0), `addr=SLOT[.FN]` placement, BAR allocation in the
 * 32-bit MMIO window and dispatch of BAR accesses to the function that decodes them.
 *
 * Threads: every vCPU Worker builds its own `PciRoot` (from the same shared buffer, which holds
 * the 0xCF8 address latch) and attaches its own function objects, whose config spaces share
 * memory. Placement and BAR allocation are planning steps done once on the main thread.
 *
 * Wiring (the machine does it):
 * ```ts
 * pio.register(PCI_CONFIG_ADDRESS_PORT, 1, root.configAddressPort, "pci:cf8");
 * pio.register(PCI_CONFIG_DATA_PORT, 4, root.configDataPort, "pci:cfc");
 * mmio.register(root.ecamWindow.base, root.ecamWindow.sizeBytes, root.ecam, "pci:ecam");
 * mmio.register(root.window.base, root.window.sizeBytes, root.barWindow, "pci:bars");
 * ```
 * 0xCF8 is registered one port wide so that a byte access to 0xCF9 (reset control) is not ours:
 * only a 32-bit access at 0xCF8 is the address latch, as on a real PC.
 * @module
 */
import type { BusDevice } from "../device.ts";
import { formatPciAddr, type PciAddress } from "./pci_address.ts";

export type { PciAddress } from "./pci_address.ts";
import {
  PCI_HEADER_TYPE,
  PCI_INTERRUPT_LINE,
  type PciBarSpec,
  PciConfigSpace,
  type PciFunctionSpec,
} from "./config_space.ts";

/** Legacy configuration address port (32-bit accesses only). */
export const PCI_CONFIG_ADDRESS_PORT = 0xcf8;
/** Legacy configuration data ports 0xCFC..0xCFF. */
export const PCI_CONFIG_DATA_PORT = 0xcfc;
/** Slots per bus and functions per slot. */
export const PCI_SLOTS = 32, PCI_FUNCTIONS = 8;
/** Intel Q35 (MCH) host bridge ids. */
export const Q35_HOST_VENDOR_ID = 0x8086, Q35_HOST_DEVICE_ID = 0x29c0;
/** Q35 PCIEXBAR register offset (the MCH's ECAM base register). */
export const Q35_PCIEXBAR = 0x60;

/** A function on the bus as the root sees it. */
export interface PciFunction {
  /** The device id used in messages, e.g. `"virtio-blk/rootfs"`. */
  readonly id: string;
  readonly config: PciConfigSpace;
  /** A read at `offset` within BAR `bar`. */
  readBar(bar: number, offset: number, data: Uint8Array): void;
  /** A write at `offset` within BAR `bar`. */
  writeBar(bar: number, offset: number, data: Uint8Array): void;
}

/** The host bridge's read-only config space contents. */
export function q35HostBridgeSpec(ecamBase: number): PciFunctionSpec {
  const pciexbar = new Uint8Array(8);
  // Enable (bit 0), length 256 MiB (bits 2:1 = 0), base in bits 35:28.
  new DataView(pciexbar.buffer).setUint32(0, (ecamBase | 1) >>> 0, true);
  return {
    vendorId: Q35_HOST_VENDOR_ID,
    deviceId: Q35_HOST_DEVICE_ID,
    revisionId: 0,
    classCode: 0x060000,
    subsystemVendorId: 0x1af4,
    subsystemId: 0x1100,
    bars: [],
    interruptPin: 0,
    capabilities: [],
    fixedBytes: [{ offset: Q35_PCIEXBAR, bytes: pciexbar }],
  };
}

/** The host bridge: config space only, read-only. */
class HostBridge implements PciFunction {
  readonly id = "pci-host/q35";
  readonly config: PciConfigSpace;
  constructor(ecamBase: number) {
    const spec = q35HostBridgeSpec(ecamBase);
    this.config = new PciConfigSpace({ shared: PciConfigSpace.createShared(spec), spec });
  }
  readBar(_bar: number, _offset: number, data: Uint8Array): void {
    data.fill(0xff);
  }
  writeBar(): void {}
}

/** Options for {@linkcode PciRoot}. */
export interface PciRootOptions {
  /** From {@linkcode PciRoot.createShared}: the same buffer in every thread. */
  shared: SharedArrayBuffer;
  /** @default "pcie.0" */
  busName?: string;
  /** The ECAM window (the machine's memory map has it: q35 `0xB000_0000`, 256 MiB). */
  ecam: { base: number; sizeBytes: number };
  /** The 32-bit MMIO window BARs are allocated in (the machine's memory map has it). */
  window: { base: number; sizeBytes: number };
}

const W_CF8 = 0;

/** The root bus; see the module doc. */
export class PciRoot {
  readonly busName: string;
  readonly window: { base: number; sizeBytes: number };
  readonly ecamWindow: { base: number; sizeBytes: number };
  /** Port 0xCF8 (register 1 port wide). */
  readonly configAddressPort: BusDevice;
  /** Ports 0xCFC..0xCFF. */
  readonly configDataPort: BusDevice;
  /** The ECAM window (offsets relative to its base). */
  readonly ecam: BusDevice;
  /** The BAR window (offsets relative to `window.base`). */
  readonly barWindow: BusDevice;
  readonly #w: Int32Array;
  readonly #fns: (PciFunction | undefined)[] = new Array(PCI_SLOTS * PCI_FUNCTIONS).fill(undefined);
  readonly #reserved = new Map<number, string>();
  #nextBarGpa: number;

  /** Allocates the shared 0xCF8 latch. */
  static createShared(): SharedArrayBuffer {
    return new SharedArrayBuffer(16);
  }

  constructor(options: PciRootOptions) {
    this.#w = new Int32Array(options.shared);
    this.busName = options.busName ?? "pcie.0";
    this.window = options.window;
    this.ecamWindow = options.ecam;
    this.#nextBarGpa = this.window.base;
    const host = new HostBridge(options.ecam.base);
    this.#reserved.set(0, host.id);
    this.attach({ slot: 0, fn: 0 }, host);
    const w = this.#w;
    this.configAddressPort = {
      read: (_off, data) => {
        if (data.length !== 4) return void data.fill(0xff);
        new DataView(data.buffer, data.byteOffset, 4).setUint32(0, Atomics.load(w, W_CF8) >>> 0, true);
      },
      write: (_off, data) => {
        if (data.length !== 4) return;
        Atomics.store(
          w,
          W_CF8,
          new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true) & 0xfffffffc | 0,
        );
      },
    };
    this.configDataPort = {
      read: (off, data) => {
        const a = Atomics.load(w, W_CF8) >>> 0;
        if (!(a & 0x80000000)) return void data.fill(0xff);
        this.#configRead((a >>> 16) & 0xff, (a >>> 11) & 31, (a >>> 8) & 7, (a & 0xfc) + off, data);
      },
      write: (off, data) => {
        const a = Atomics.load(w, W_CF8) >>> 0;
        if (!(a & 0x80000000)) return;
        this.#configWrite((a >>> 16) & 0xff, (a >>> 11) & 31, (a >>> 8) & 7, (a & 0xfc) + off, data);
      },
    };
    this.ecam = {
      read: (off, data) =>
        this.#configRead(off >>> 20, (off >>> 15) & 31, (off >>> 12) & 7, off & 0xfff, data),
      write: (off, data) =>
        this.#configWrite(off >>> 20, (off >>> 15) & 31, (off >>> 12) & 7, off & 0xfff, data),
    };
    this.barWindow = {
      read: (off, data) => {
        const hit = this.#findBar(this.window.base + off, data.length);
        if (hit) hit.fn.readBar(hit.bar, hit.offset, data);
        else data.fill(0xff);
      },
      write: (off, data) => {
        const hit = this.#findBar(this.window.base + off, data.length);
        if (hit) hit.fn.writeBar(hit.bar, hit.offset, data);
      },
    };
  }

  /**
   * Reserves a slot/function for `deviceId` (main thread, while building the machine).
   * @param addr the `addr=` given; without it the first free slot from 1, function 0
   * @throws {RangeError} naming the device when the address is out of range, taken, or the bus is full
   */
  place(deviceId: string, addr?: PciAddress): PciAddress {
    if (addr === undefined) {
      for (let slot = 1; slot < PCI_SLOTS; slot++) {
        if (!this.#slotUsed(slot)) {
          this.#reserved.set(slot * PCI_FUNCTIONS, deviceId);
          return { slot, fn: 0 };
        }
      }
      throw new RangeError(`Cannot place '${deviceId}' on ${this.busName}: every slot is taken`);
    }
    const a = addr;
    if (
      !Number.isInteger(a.slot) || !Number.isInteger(a.fn) || a.slot < 0 || a.fn < 0 || a.slot >= PCI_SLOTS ||
      a.fn >= PCI_FUNCTIONS
    ) {
      throw new RangeError(`Cannot place '${deviceId}' at addr '${formatPciAddr(a)}': outside 0x0..0x1f.7`);
    }
    const key = a.slot * PCI_FUNCTIONS + a.fn;
    const other = this.#reserved.get(key);
    if (other !== undefined) {
      throw new RangeError(
        `Cannot place '${deviceId}' at ${this.busName} addr '${
          formatPciAddr(a)
        }': already used by '${other}'`,
      );
    }
    this.#reserved.set(key, deviceId);
    return a;
  }

  /** Gives back a reservation (a device that failed to open after {@linkcode place}). */
  unplace(addr: PciAddress): void {
    if (addr.slot === 0 && addr.fn === 0) return;
    this.#reserved.delete(addr.slot * PCI_FUNCTIONS + addr.fn);
  }

  /**
   * Checks the placement is one a guest can enumerate: every populated slot has function 0.
   * @throws {RangeError} naming the device that would stay invisible
   */
  validate(): void {
    for (const [key, id] of this.#reserved) {
      const slot = Math.floor(key / PCI_FUNCTIONS);
      if (key % PCI_FUNCTIONS !== 0 && !this.#reserved.has(slot * PCI_FUNCTIONS)) {
        throw new RangeError(
          `Cannot place '${id}' at ${this.busName} addr '${
            formatPciAddr({ slot, fn: key % PCI_FUNCTIONS })
          }': ` +
            `function 0 of slot ${
              slot.toString(16).padStart(2, "0")
            } is empty, so the guest would not see it`,
        );
      }
    }
  }

  /**
   * Allocates guest addresses for a function's BARs in the MMIO window, each aligned to its size.
   * @returns the address of each BAR, in the order given
   * @throws {RangeError} naming the device when the window is full
   */
  allocateBars(deviceId: string, bars: PciBarSpec[]): number[] {
    return bars.map((bar) => {
      const gpa = Math.ceil(this.#nextBarGpa / bar.sizeBytes) * bar.sizeBytes;
      const end = this.window.base + this.window.sizeBytes;
      if (gpa + bar.sizeBytes > end) {
        throw new RangeError(
          `Cannot allocate BAR ${bar.index} of '${deviceId}' (0x${bar.sizeBytes.toString(16)} bytes): ` +
            `the MMIO window 0x${this.window.base.toString(16)}..0x${(end - 1).toString(16)} is full`,
        );
      }
      this.#nextBarGpa = gpa + bar.sizeBytes;
      return gpa;
    });
  }

  /**
   * The GSI INTx of a function at `addr` raises: pin INTA..INTD swizzled by slot over GSI 16..23
   * (the IOAPIC's PCI pins). Written to the function's Interrupt Line register by {@linkcode attach}.
   */
  intxGsi(addr: PciAddress, pin = 1): number {
    return 16 + ((addr.slot + pin - 1) % 8);
  }

  /** Attaches this thread's object for the function at `addr` (no checks: plan data was checked). */
  attach(addr: PciAddress, fn: PciFunction): void {
    this.#fns[addr.slot * PCI_FUNCTIONS + addr.fn] = fn;
    const pin = fn.config.readU16(0x3c) >>> 8;
    if (pin !== 0 && fn.config.readU16(PCI_INTERRUPT_LINE) === pin << 8) {
      fn.config.setRaw(PCI_INTERRUPT_LINE, Uint8Array.of(this.intxGsi(addr, pin)));
    }
  }

  /** The function attached at `addr`. */
  functionAt(addr: PciAddress): PciFunction | undefined {
    return this.#fns[addr.slot * PCI_FUNCTIONS + addr.fn];
  }

  /** Every attached function with its address. */
  functions(): Array<{ addr: PciAddress; fn: PciFunction }> {
    const out: Array<{ addr: PciAddress; fn: PciFunction }> = [];
    this.#fns.forEach((fn, i) => {
      if (fn) out.push({ addr: { slot: Math.floor(i / PCI_FUNCTIONS), fn: i % PCI_FUNCTIONS }, fn });
    });
    return out;
  }

  #slotUsed(slot: number): boolean {
    for (let f = 0; f < PCI_FUNCTIONS; f++) if (this.#reserved.has(slot * PCI_FUNCTIONS + f)) return true;
    return false;
  }

  #configRead(bus: number, slot: number, fn: number, reg: number, data: Uint8Array): void {
    const f = bus === 0 ? this.#fns[slot * PCI_FUNCTIONS + fn] : undefined;
    if (!f) return void data.fill(0xff);
    f.config.read(reg, data);
    // Function 0 advertises more functions in the slot through header type bit 7.
    const ht = PCI_HEADER_TYPE - reg;
    if (fn === 0 && ht >= 0 && ht < data.length) {
      for (let i = 1; i < PCI_FUNCTIONS; i++) {
        if (this.#fns[slot * PCI_FUNCTIONS + i]) {
          data[ht] = data[ht]! | 0x80;
          break;
        }
      }
    }
  }

  #configWrite(bus: number, slot: number, fn: number, reg: number, data: Uint8Array): void {
    const f = bus === 0 ? this.#fns[slot * PCI_FUNCTIONS + fn] : undefined;
    f?.config.write(reg, data);
  }

  #findBar(gpa: number, len: number): { fn: PciFunction; bar: number; offset: number } | undefined {
    for (const f of this.#fns) {
      if (!f) continue;
      const bars = f.config.decodedBars();
      for (const spec of f.config.spec.bars) {
        const base = bars[spec.index];
        if (base !== undefined && gpa >= base && gpa + len <= base + spec.sizeBytes) {
          return { fn: f, bar: spec.index, offset: gpa - base };
        }
      }
    }
    return undefined;
  }
}
