/**
 * {@linkcode MachineConfig}: the parsed command line as plain data, no I/O done (files are not
 * opened or checked here; the VMM does that).
 * @module
 */
import type { MigrationUri } from "../migration/uri.ts";
import type { PciAddress } from "../devices/pci/pci_address.ts";
import type { DriveConfig } from "../devices/virtio/block/block.ts";

/** `-drive id=ID,file=PATH,...`: a raw image a `-device virtio-blk-pci,drive=ID` uses (one declaration, the device's). */
export type { DriveConfig, PciAddress };

/** The machine: always x86_64 q35 on KVM. */
export interface MachineTypeConfig {
  /** `-machine [type=]q35`; the only type (StratoVirt's default without `-machine` is microvm; ferry's is q35). */
  type: "q35";
  /** `-machine accel=kvm` or `-accel kvm`; the only accelerator. */
  accel: "kvm";
}

/** `-kernel PATH [-append CMDLINE] [-initrd PATH]`. */
export interface KernelConfig {
  /** Path of the vmlinux (ELF) or bzImage, as given. */
  path: string;
  /** Kernel command line: every `-append` value joined by one space; `""` without `-append`. */
  cmdline: string;
  /** Path of the initial RAM disk, as given. */
  initrd?: string;
}

/**
 * Where the 16550 UART (COM1, ttyS0) sends its output. The UART always exists; `none` (the default,
 * StratoVirt has no serial without `-serial`) discards output and never delivers input.
 */
export type SerialConfig =
  | { kind: "stdio" }
  | { kind: "file"; path: string }
  | { kind: "none" };

/** One QMP listener: a UNIX socket ferry listens on. */
export interface QmpConfig {
  /** Socket path, as given. */
  path: string;
  /**
   * Wait for a client before the guest starts (`server` without `nowait`/`wait=off`, as QEMU and
   * StratoVirt).
   * @default true
   */
  wait: boolean;
}

/** `-incoming`: this process is a migration destination. */
export type IncomingConfig =
  /** `tcp:HOST:PORT` (port 0 asks for an ephemeral port), `unix:PATH` or `file:PATH` (a snapshot). */
  | MigrationUri
  /** `defer` (QEMU): wait for QMP `migrate-incoming`, e.g. after `migrate-set-parameters`. */
  | { kind: "defer" };

/** `-object tls-creds-x509,...`: TLS credentials for migration (QEMU's file names in `dir`). */
export interface TlsCredsObjectConfig {
  type: "tls-creds-x509";
  id: string;
  dir: string;
  endpoint: "server" | "client";
  verifyPeer: boolean;
}

/** `-device DRIVER,id=ID,bus=pcie.0,addr=SLOT[.FN],...`. */
export interface DeviceConfig {
  /** `virtio-blk-pci` or `virtio-net-pci`. */
  driver: "virtio-blk-pci" | "virtio-net-pci";
  /** Unique among devices. */
  id: string;
  /** Always `pcie.0` for now (no root ports yet). */
  bus?: string;
  addr?: PciAddress;
  /** `virtio-net-pci` `mac=`, parsed once (also in `props.mac` as canonical text). */
  mac?: Uint8Array;
  /**
   * Every other key, validated, as given except: `mac` lower-cased, booleans (`multifunction`, `mq`)
   * written `on`/`off`. Blk: `drive`, `serial`, `multifunction`, `bootindex`, `num-queues`,
   * `queue-size`. Net: `netdev`, `mac`, `multifunction`, `mq`, `queue-size`, `vectors`.
   */
  props: Record<string, string>;
}

/** `-netdev tap,id=ID,ifname=NAME` or `-netdev tap,id=ID,fd=N`. */
export interface NetdevConfig {
  kind: "tap";
  /** Unique among netdevs. */
  id: string;
  /** Host tap interface; StratoVirt uses it when both `ifname` and `fd` are given. */
  ifname?: string;
  /** An open tap fd inherited from the parent. */
  fd?: number;
}

/** The whole command line, parsed and cross-checked. */
export interface MachineConfig {
  machine: MachineTypeConfig;
  /** Guest RAM in bytes, 128 MiB..512 GiB, a multiple of 4 KiB. @default 268435456 (256 MiB) */
  memoryBytes: number;
  /** vCPUs, 1..254. @default 1 */
  cpus: number;
  kernel?: KernelConfig;
  /** @default {kind: "none"} */
  serial: SerialConfig;
  /** QMP listeners from `-qmp` and `-chardev socket` + `-mon`, in command-line order. */
  qmp: QmpConfig[];
  incoming?: IncomingConfig;
  /** `-object tls-creds-x509` in command-line order. */
  objects?: TlsCredsObjectConfig[];
  /** `-global migration.tls-creds=ID` / `migration.tls-hostname=NAME`. */
  migrationGlobals?: { "tls-creds"?: string; "tls-hostname"?: string };
  /** In command-line order. */
  drives: DriveConfig[];
  /** In command-line order. */
  devices: DeviceConfig[];
  /** In command-line order. */
  netdevs: NetdevConfig[];
  /** `-name`. */
  name?: string;
  /** `-D PATH`: log file; absent logs to stderr. */
  logFile?: string;
  /** `-mem-prealloc`: back all guest RAM with host memory at start. */
  memPrealloc?: boolean;
  /** `-daemonize` is refused ("not supported yet"), so always false. */
  daemonize: boolean;
  /** Lines for stderr about what ferry chose for the operator (a device moved off the host bridge's slot). */
  notices?: string[];
}
