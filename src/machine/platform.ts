/**
 * The q35 platform devices on the PIO bus and their wiring. The main thread creates the shared
 * device state once ({@linkcode Platform}) and every vCPU Worker rebuilds its own device objects
 * over the same SharedArrayBuffers from the plain-data {@linkcode DevicePlan} ({@linkcode buildBuses}).
 *
 * | ports        | device                  | id               |
 * |--------------|-------------------------|------------------|
 * | 0x3f8–0x3ff  | 16550A UART, IRQ 4      | `serial:ttyS0`   |
 * | 0xcf9        | reset control           | `reset-control`  |
 * | 0x64         | i8042 (reset only)      | `i8042`          |
 * | 0x600–0x67f  | ACPI PM (SCI on IRQ 9)  | `acpi-pm`        |
 * | 0x80         | POST code               | `debug-port`     |
 * | 0x70–0x71    | RTC/CMOS                | `rtc-cmos`       |
 * | 0xcf8, 0xcfc | PCI config mechanism #1 | `pci:cf8/cfc`    |
 *
 * On MMIO: PCIe ECAM at 0xB0000000 and the BAR window 0xC0000000–0xFEBFFFFF (virtio-pci).
 * @module
 */
import { MmioBus, PioBus } from "../bus/bus.ts";
import type { Migratable } from "../devices/device.ts";
import { AcpiPm } from "../devices/platform/acpi_pm.ts";
import { Cmos } from "../devices/platform/cmos.ts";
import { DebugPort } from "../devices/platform/debug_port.ts";
import { I8042, ResetControl } from "../devices/platform/reset.ts";
import { Uart16550 } from "../devices/serial/uart16550.ts";
import { shim } from "../ffi/shim.ts";
import { KVM } from "../kvm/ioctls.ts";
import { lowRamEnd } from "./boot/layout.ts";
import { VmFd } from "../kvm/kvm.ts";
import type { PciPlan } from "./pci.ts";

/** Where the serial console goes. */
export type SerialSink = { kind: "stdio" } | { kind: "file"; path: string } | { kind: "none" };

/** A guest request the machine must act on. */
export type MachineRequest = "reset" | "poweroff";

/** Plain data a vCPU Worker needs to build its copy of the buses. */
export interface DevicePlan {
  vmFd: number;
  serialSink: SerialSink;
  uart: SharedArrayBuffer;
  resetControl: SharedArrayBuffer;
  acpiPm: SharedArrayBuffer;
  debugPort: SharedArrayBuffer;
  cmos: SharedArrayBuffer;
  /** PCI root, functions and BARs (shared state), when the VM has PCI devices. */
  pci?: PciPlan;
}

/** The buses one thread dispatches exits to. */
export interface Buses {
  pio: PioBus;
  mmio: MmioBus;
}

function sinkWriter(sink: SerialSink): (bytes: Uint8Array) => void {
  if (sink.kind === "stdio") return (b) => void Deno.stdout.writeSync(b);
  if (sink.kind === "file") {
    const f = Deno.openSync(sink.path, { append: true, create: true });
    return (b) => void f.writeSync(b);
  }
  return () => {};
}

function irqLine(vmFd: number): (irq: number, level: boolean) => void {
  const b = new Uint8Array(8);
  const dv = new DataView(b.buffer);
  return (irq, level) => {
    dv.setUint32(0, irq, true);
    dv.setUint32(4, level ? 1 : 0, true);
    shim().ferry_ioctl_ptr(vmFd, KVM.IRQ_LINE, b);
  };
}

interface Devices {
  uart: Uart16550;
  resetControl: ResetControl;
  acpiPm: AcpiPm;
  debugPort: DebugPort;
  cmos: Cmos;
}

function makeDevices(
  plan: DevicePlan,
  onRequest: (r: MachineRequest) => void,
  output: (b: Uint8Array) => void,
) {
  const irq = irqLine(plan.vmFd);
  const devices: Devices = {
    uart: new Uart16550({ shared: plan.uart, output, irq: (l) => irq(4, l) }),
    resetControl: new ResetControl({ shared: plan.resetControl, onRequest }),
    acpiPm: new AcpiPm({ shared: plan.acpiPm, onRequest, irq: (l) => irq(9, l) }),
    debugPort: new DebugPort({ shared: plan.debugPort }),
    cmos: new Cmos({ shared: plan.cmos }),
  };
  const pio = new PioBus();
  pio.register(0x3f8, 8, devices.uart, "serial:ttyS0");
  pio.register(0xcf9, 1, devices.resetControl, "reset-control");
  pio.register(0x64, 1, new I8042({ onRequest }), "i8042");
  pio.register(0x600, 0x80, devices.acpiPm, "acpi-pm");
  pio.register(0x80, 1, devices.debugPort, "debug-port");
  pio.register(0x70, 2, devices.cmos, "rtc-cmos");
  return { devices, buses: { pio, mmio: new MmioBus() } };
}

/**
 * Builds this thread's buses over the shared device state. The PCI root and the virtio devices
 * (pci.ts and what it imports) load only when the plan has PCI functions: a VM without `-device`
 * does not pay for their code in each thread.
 */
export async function buildBuses(plan: DevicePlan, onRequest: (r: MachineRequest) => void): Promise<Buses> {
  const { buses } = makeDevices(plan, onRequest, sinkWriter(plan.serialSink));
  if (plan.pci) {
    const { buildPciRoot, registerPciBuses } = await import("./pci.ts");
    const { root } = buildPciRoot(plan.pci, VmFd.fromRawFd(plan.pci.vmFd));
    registerPciBuses(root, buses.pio, buses.mmio);
  }
  return buses;
}

/** Main-thread owner of the platform devices' shared state. */
export class Platform {
  readonly #plan: DevicePlan;
  readonly #devices: Devices;

  constructor(opts: { vmFd: number; serial: SerialSink; ramBytes: number; pci?: PciPlan }) {
    const low = lowRamEnd(opts.ramBytes);
    this.#plan = {
      vmFd: opts.vmFd,
      serialSink: opts.serial,
      uart: Uart16550.createShared(),
      resetControl: ResetControl.createShared(),
      acpiPm: AcpiPm.createShared(),
      debugPort: DebugPort.createShared(),
      cmos: Cmos.createShared({ lowMemBytes: low, highMemBytes: Math.max(0, opts.ramBytes - low) }),
      ...(opts.pci ? { pci: opts.pci } : {}),
    };
    // Requests raised on the main thread (none expected: the guest drives these ports) are ignored.
    const { pci: _pci, ...platformOnly } = this.#plan;
    this.#devices = makeDevices(platformOnly, () => {}, sinkWriter(opts.serial)).devices;
  }

  plan(): DevicePlan {
    return this.#plan;
  }

  /** Devices with migratable state, in a stable order. */
  migratables(): Migratable[] {
    const d = this.#devices;
    return [d.uart, d.resetControl, d.acpiPm, d.debugPort, d.cmos];
  }

  /** Guest input for the serial console; returns the bytes accepted. */
  pushSerialInput(bytes: Uint8Array): number {
    return this.#devices.uart.pushInput(bytes);
  }

  /** Waits until the UART can take input. */
  waitSerialRoom(timeoutMs: number): Promise<unknown> {
    return this.#devices.uart.waitForRoom(timeoutMs);
  }

  /** QMP system_powerdown: ACPI power button. */
  pressPowerButton(): void {
    this.#devices.acpiPm.pressPowerButton();
  }

  reset(): void {
    this.#devices.uart.reset();
    this.#devices.resetControl.reset();
    this.#devices.acpiPm.reset();
  }

  close(): void {}
}
