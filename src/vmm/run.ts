/**
 * `ferry ARGS`: parse the command line (or run a client subcommand, src/client/commands.ts), start the VMM, feed the serial console, end cleanly on a
 * guest exit, `quit`, SIGINT or SIGTERM. Returns the process exit code:
 *
 * | code | meaning                                                         |
 * |------|-----------------------------------------------------------------|
 * | 0    | guest powered off or reset itself, `quit`, SIGINT/SIGTERM         |
 * | 1    | ferry failed (KVM error, incoming migration failed, vCPU error) |
 * | 2    | bad command line, or the guest triple-faulted                   |
 * @module
 */
import { helpText, migrationAttributes, parseArgs } from "../config/mod.ts";
import type { PciDeviceSpec, VmSpec } from "../machine/vm.ts";
import type { MachineConfig } from "../config/mod.ts";
import { configureLog, logger } from "../util/log.ts";
import { CLIENT_COMMANDS, runClient } from "../client/commands.ts";
import type { VmmOptions } from "./vmm.ts";
import { Vmm } from "./vmm.ts";
import { shim } from "../ffi/shim.ts";
import { warnIfStaleBundle } from "../util/bundled.ts";

const log = logger("ferry");
const encoder = new TextEncoder();

function say(line: string): void {
  Deno.stderr.writeSync(encoder.encode(line + "\n"));
}

/** SHA-256 of the kernel image (the shim's: WebCrypto would load ~2 MiB of code for one hash). */
async function kernelDigest(path: string): Promise<string> {
  const bytes = await Deno.readFile(path);
  const hash = new Uint8Array(32);
  shim().ferry_sha256(bytes, BigInt(bytes.length), hash);
  return "sha256:" + Array.from(hash.subarray(0, 16), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The `-device` list as the machine's PCI device specs (drives and netdevs resolved). */
export function pciDevices(config: MachineConfig): PciDeviceSpec[] {
  return config.devices.map((d, index): PciDeviceSpec => {
    const addr = d.addr;
    if (d.driver === "virtio-blk-pci") {
      const drive = config.drives.find((x) => x.id === d.props.drive);
      if (!drive) throw new TypeError(`Cannot create '${d.id}': drive '${d.props.drive}' is not defined`);
      const serial = d.props.serial ?? drive.serial;
      return {
        kind: "virtio-blk",
        ...(addr ? { addr } : {}),
        drive: {
          id: drive.id,
          file: drive.file,
          readonly: drive.readonly,
          direct: drive.direct,
          ...(serial !== undefined ? { serial } : {}),
        },
      };
    }
    const netdev = config.netdevs.find((x) => x.id === d.props.netdev);
    if (!netdev) throw new TypeError(`Cannot create '${d.id}': netdev '${d.props.netdev}' is not defined`);
    if (netdev.fd !== undefined && netdev.ifname === undefined) {
      throw new TypeError(
        `Cannot create '${d.id}': netdev '${netdev.id}' with fd= is not supported yet; use ifname=`,
      );
    }
    // QEMU's default MAC, one per NIC.
    const mac = d.mac ?? Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, (0x56 + index) & 0xff);
    return { kind: "virtio-net", ...(addr ? { addr } : {}), id: d.id, ifname: netdev.ifname ?? "", mac };
  });
}

/** Turns the parsed command line into what the VMM needs. */
export async function vmmOptions(config: MachineConfig): Promise<VmmOptions> {
  const digest = config.kernel ? await kernelDigest(config.kernel.path) : undefined;
  const spec: VmSpec = {
    memoryBytes: config.memoryBytes,
    ...(config.memPrealloc ? { memPrealloc: true } : {}),
    pci: pciDevices(config),
    cpus: config.cpus,
    serial: config.serial,
    ...(config.kernel
      ? {
        kernel: {
          path: config.kernel.path,
          cmdline: config.kernel.cmdline,
          ...(config.kernel.initrd !== undefined ? { initrd: config.kernel.initrd } : {}),
        },
      }
      : {}),
  };
  const incoming = config.incoming?.kind === "defer" ? "defer" : config.incoming;
  return {
    spec,
    qmp: config.qmp.map((q) => ({ path: q.path, wait: q.wait })),
    ...(incoming !== undefined ? { incoming } : {}),
    ...(config.objects ? { tlsCreds: config.objects } : {}),
    ...(config.migrationGlobals ? { migrationParameters: config.migrationGlobals } : {}),
    configAttributes: migrationAttributes(config, digest),
  };
}

async function pumpStdin(vmm: Vmm): Promise<void> {
  const buf = new Uint8Array(256);
  try {
    for (;;) {
      const n = await Deno.stdin.read(buf);
      if (n === null) return;
      let off = 0;
      while (off < n) {
        off += vmm.vm.platform.pushSerialInput(buf.subarray(off, n));
        if (off < n) await vmm.vm.platform.waitSerialRoom(100);
      }
    }
  } catch {
    // stdin closed or VM gone
  }
}

/**
 * Runs ferry with `args` (no program name) and returns the exit code.
 * @param args the command line, e.g. `["-machine", "q35", "-kernel", "probe.elf"]`
 */
export async function runFerry(args: string[]): Promise<number> {
  // `deno task ferry -- ARGS` passes the separator through.
  if (args[0] === "--") args = args.slice(1);
  const sub = args[0];
  if (sub !== undefined && (CLIENT_COMMANDS as readonly string[]).includes(sub)) {
    return await runClient(sub, args.slice(1));
  }
  if (args.some((a) => a === "-help" || a === "--help" || a === "-h")) {
    Deno.stdout.writeSync(encoder.encode(helpText()));
    return 0;
  }
  let config: MachineConfig;
  try {
    config = parseArgs(args);
  } catch (e) {
    say(`ferry: ${(e as Error).message}`);
    return 2;
  }
  for (const line of config.notices ?? []) say(`ferry: ${line}`);
  if (config.logFile !== undefined) configureLog({ file: config.logFile });
  if (!config.kernel && !config.incoming) {
    say("ferry: -kernel is required: see 'ferry -help'");
    return 2;
  }
  let opts: VmmOptions;
  try {
    if (config.kernel) await Deno.stat(config.kernel.path);
    opts = await vmmOptions(config);
  } catch (e) {
    const msg = e instanceof Deno.errors.NotFound
      ? `Cannot open kernel '${config.kernel?.path}': no such file`
      : (e as Error).message;
    say(`ferry: ${msg}`);
    return 2;
  }
  let vmm: Vmm;
  try {
    vmm = await Vmm.start(opts);
  } catch (e) {
    const err = e as Error;
    say(`ferry: ${err.message}`);
    log.debug("%s", err.stack ?? "");
    return err instanceof SyntaxError || err instanceof RangeError || err instanceof TypeError ? 2 : 1;
  }
  // Once the guest runs, off the start's critical path (~3 ms of stat calls when bundled).
  warnIfStaleBundle(import.meta.url);
  const onSignal = () => void vmm.end({ code: 0, message: "ferry: terminated by signal" });
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  if (config.serial.kind === "stdio") void pumpStdin(vmm);
  const end = await vmm.ended;
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);
  if (end.message) say(end.message);
  return end.code;
}
