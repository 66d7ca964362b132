/**
 * {@linkcode migrationAttributes}: the configuration a migration destination must share with its
 * source, as ordered `name → value` pairs that the migration compares before any RAM moves and
 * names on a mismatch (StratoVirt's `check_vcpu`/`check_memory`/`check_devices` idea).
 *
 * Included, because the guest sees them or its next reboot depends on them: `-machine`, `-m` (bytes),
 * `-smp`, the kernel (a content digest the caller computes), `-append`, whether there is an
 * initrd, every device (driver, bus, addr and each property: drive, netdev, mac, serial,
 * multifunction, queue sizes, ...), every drive's readonly, direct (O_DIRECT keeps a shared image
 * coherent between the hosts), format and serial, and every netdev's kind.
 *
 * Left out, because they may differ between two hosts running the same guest: `-incoming`, `-qmp`,
 * `-chardev`/`-mon`, `-serial` (where the console goes), `-D`, `-name`, `-daemonize`, drive file
 * paths (the shared image may be mounted elsewhere), the kernel and initrd paths (the digest
 * stands for the kernel), and a tap's `ifname`/`fd`.
 * @module
 */
import { formatPciAddr } from "./device.ts";
import type { MachineConfig } from "./machine_config.ts";

function onOff(b: boolean): string {
  return b ? "on" : "off";
}

/**
 * The attributes a destination must match, in a fixed order: machine, memory, CPUs, kernel,
 * devices (command-line order), drives, netdevs.
 * @param config the parsed command line
 * @param kernelDigest a digest of the kernel file's contents, e.g. `sha256:...`; the `kernel`
 * attribute is present only when given
 * @returns e.g. `{"-machine": "q35", "-m": "2147483648", "-smp": "2", ..., "device rootfs: addr": "0x2.0"}`
 */
export function migrationAttributes(config: MachineConfig, kernelDigest?: string): Record<string, string> {
  const a: Record<string, string> = {};
  a["-machine"] = config.machine.type;
  a["-m"] = String(config.memoryBytes);
  a["-smp"] = String(config.cpus);
  if (config.kernel) {
    if (kernelDigest !== undefined) a["kernel"] = kernelDigest;
    a["-append"] = config.kernel.cmdline;
    a["initrd"] = config.kernel.initrd !== undefined ? "yes" : "no";
  }
  for (const d of config.devices) {
    const p = `device ${d.id}: `;
    a[p + "driver"] = d.driver;
    if (d.bus !== undefined) a[p + "bus"] = d.bus;
    if (d.addr) a[p + "addr"] = formatPciAddr(d.addr);
    for (const key of Object.keys(d.props).sort()) a[p + key] = d.props[key] as string;
  }
  for (const d of config.drives) {
    const p = `drive ${d.id}: `;
    a[p + "readonly"] = onOff(d.readonly);
    a[p + "direct"] = onOff(d.direct);
    a[p + "format"] = "raw";
    if (d.serial !== undefined) a[p + "serial"] = d.serial;
  }
  for (const n of config.netdevs) a[`netdev ${n.id}: kind`] = n.kind;
  return a;
}
