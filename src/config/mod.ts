/**
 * ferry's command line, in StratoVirt's dialect (single-dash options, `key=value` lists with QEMU's
 * `,,` escape) so operators' StratoVirt scripts run unchanged. The grammar, defaults and ranges
 * follow StratoVirt's `machine_manager/src/config/*.rs` and `docs/config_guidebook.md`: `-m`
 * 128M..512G (default 256M, default unit M), `-smp` 1..254 (default 1), `-machine q35` only,
 * drives `readonly=off,direct=on` by default, `-qmp unix:PATH,server[,nowait]`.
 *
 * Every option StratoVirt has is recognised: supported ones are parsed into a plain
 * {@linkcode MachineConfig}; ones a later stage may implement are refused with "not supported
 * yet"; StratoVirt's own no-op options are accepted and ignored. Errors are one line naming the
 * option and the accepted form, thrown as `TypeError` (unknown, missing, unsupported, duplicate
 * or dangling), `SyntaxError` (malformed) or `RangeError` (out of range). Nothing is read from
 * disk here.
 *
 * Files: one per option family (`machine.ts`, `memory.ts`, `smp.ts`, `kernel.ts`, `serial.ts`,
 * `chardev.ts`, `qmp.ts`, `incoming.ts`, `drive.ts`, `device.ts`, `netdev.ts`, `misc.ts`), the
 * `_kv.ts` list syntax and `_tokenize.ts` argv rules, `parse_args.ts` (option table, cross-checks),
 * `help.ts`, `migration_attributes.ts`, `canonical_command_line.ts`.
 *
 * @example
 * ```ts
 * import { helpText, migrationAttributes, parseArgs } from "./mod.ts";
 *
 * const config = parseArgs([
 *   "-machine", "q35", "-kernel", "vmlinux.bin", "-append", "console=ttyS0 root=/dev/vda",
 *   "-m", "2G", "-smp", "2",
 *   "-drive", "file=rootfs.img,id=rootfs,readonly=off,direct=off",
 *   "-device", "virtio-blk-pci,drive=rootfs,id=rootfs,bus=pcie.0,addr=0x2",
 *   "-qmp", "unix:/run/src.sock,server,nowait", "-serial", "stdio",
 * ]);
 * config.memoryBytes; // 2147483648
 * config.devices[0]?.addr; // { slot: 2, fn: 0 }
 * config.qmp; // [{ path: "/run/src.sock", wait: false }]
 * migrationAttributes(config, "sha256:...")["device rootfs: addr"]; // "0x2.0"
 * helpText().includes("-incoming"); // true
 * ```
 * @module
 */
export { parseArgs } from "./parse_args.ts";
export { helpText } from "./help.ts";
export { migrationAttributes } from "./migration_attributes.ts";
export { canonicalArgs, canonicalCommandLine } from "./canonical_command_line.ts";
export { formatIncoming } from "./incoming.ts";
export { formatPciAddr, parsePciAddr } from "./device.ts";
export { DEFAULT_MEMORY_BYTES, MAX_MEMORY_BYTES, MIN_MEMORY_BYTES } from "./memory.ts";
export { DEFAULT_CPUS, MAX_CPUS } from "./smp.ts";
export type {
  DeviceConfig,
  DriveConfig,
  IncomingConfig,
  KernelConfig,
  MachineConfig,
  MachineTypeConfig,
  NetdevConfig,
  PciAddress,
  QmpConfig,
  SerialConfig,
} from "./machine_config.ts";
