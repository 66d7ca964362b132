/**
 * {@linkcode parseArgs}: argv → {@linkcode MachineConfig}, and {@linkcode OPTIONS}, the table of every
 * option ferry knows (the tokenizer's grammar and `ferry -help`'s lines).
 * @module
 */
import { notSupportedYet, type OptionInfo } from "./_kv.ts";
import { type Occurrence, tokenize } from "./_tokenize.ts";
import { type Chardev, CHARDEV_OPTION, parseChardev } from "./chardev.ts";
import { checkDevices, DEVICE_OPTION, parseDevice, relocateFromHostBridge } from "./device.ts";
import { DRIVE_OPTION, parseDrive } from "./drive.ts";
import { INCOMING_OPTION, parseIncoming } from "./incoming.ts";
import { APPEND_OPTION, INITRD_OPTION, KERNEL_OPTION, parseKernel } from "./kernel.ts";
import {
  ACCEL_OPTION,
  CPU_OPTION,
  DEFAULT_MACHINE,
  MACHINE_OPTION,
  parseAccel,
  parseCpu,
  parseMachine,
} from "./machine.ts";
import type {
  DeviceConfig,
  DriveConfig,
  IncomingConfig,
  MachineConfig,
  MachineTypeConfig,
  NetdevConfig,
  QmpConfig,
  TlsCredsObjectConfig,
} from "./machine_config.ts";
import { DEFAULT_MEMORY_BYTES, MEMORY_OPTION, parseMemory } from "./memory.ts";
import {
  HELP_OPTION,
  IGNORED_OPTIONS,
  LATER_OPTIONS,
  LOG_OPTION,
  MEM_PREALLOC_OPTION,
  NAME_OPTION,
  parseName,
} from "./misc.ts";
import { NETDEV_OPTION, parseNetdev } from "./netdev.ts";
import { GLOBAL_OPTION, type MigrationGlobals, OBJECT_OPTION, parseGlobal, parseObject } from "./object.ts";
import { MON_OPTION, type MonRequest, parseMon, parseQmp, QMP_OPTION, resolveMon } from "./qmp.ts";
import { DEFAULT_SERIAL, parseSerial, resolveSerial, SERIAL_OPTION, type SerialRequest } from "./serial.ts";
import { DEFAULT_CPUS, parseSmp, SMP_OPTION } from "./smp.ts";

/** Every option ferry knows, in `ferry -help` order. */
export const OPTIONS: readonly OptionInfo[] = [
  MACHINE_OPTION,
  ACCEL_OPTION,
  CPU_OPTION,
  MEMORY_OPTION,
  SMP_OPTION,
  KERNEL_OPTION,
  APPEND_OPTION,
  INITRD_OPTION,
  DRIVE_OPTION,
  DEVICE_OPTION,
  NETDEV_OPTION,
  SERIAL_OPTION,
  CHARDEV_OPTION,
  QMP_OPTION,
  MON_OPTION,
  INCOMING_OPTION,
  OBJECT_OPTION,
  GLOBAL_OPTION,
  NAME_OPTION,
  LOG_OPTION,
  HELP_OPTION,
  MEM_PREALLOC_OPTION,
  ...LATER_OPTIONS,
  ...IGNORED_OPTIONS,
];

type QmpEntry = { qmp: QmpConfig } | { mon: MonRequest };

/** Everything collected from the occurrences before the cross-checks. */
interface Collected {
  machine: MachineTypeConfig;
  memoryBytes: number;
  cpus: number;
  kernel?: string;
  appends: string[];
  initrd?: string;
  serial?: SerialRequest;
  chardevs: Map<string, Chardev>;
  qmp: QmpEntry[];
  incoming?: IncomingConfig;
  objects: TlsCredsObjectConfig[];
  globals: MigrationGlobals;
  drives: DriveConfig[];
  devices: DeviceConfig[];
  netdevs: NetdevConfig[];
  name?: string;
  logFile?: string;
  memPrealloc?: boolean;
}

function addUnique<T extends { id: string }>(list: T[], item: T, option: string): void {
  if (list.some((x) => x.id === item.id)) {
    throw new TypeError(`Cannot add ${option} id=${item.id}: another ${option} has that id`);
  }
  list.push(item);
}

function collect(occ: Occurrence, c: Collected): void {
  const info = occ.info;
  if (info.status === "ignored") return;
  if (info.status === "unsupported") throw notSupportedYet(`Option ${occ.spelled}`);
  const value = occ.values[0] as string;
  switch (info) {
    case MACHINE_OPTION:
      c.machine = parseMachine(value);
      return;
    case ACCEL_OPTION:
      c.machine = { ...c.machine, accel: parseAccel(value) };
      return;
    case CPU_OPTION:
      parseCpu(value);
      return;
    case MEMORY_OPTION:
      c.memoryBytes = parseMemory(value);
      return;
    case MEM_PREALLOC_OPTION:
      c.memPrealloc = true;
      return;
    case SMP_OPTION:
      c.cpus = parseSmp(value);
      return;
    case KERNEL_OPTION:
      c.kernel = value;
      return;
    case APPEND_OPTION:
      c.appends.push(...occ.values);
      return;
    case INITRD_OPTION:
      c.initrd = value;
      return;
    case SERIAL_OPTION:
      c.serial = parseSerial(value);
      return;
    case CHARDEV_OPTION:
      for (const v of occ.values) {
        const dev = parseChardev(v);
        if (c.chardevs.has(dev.id)) {
          throw new TypeError(`Cannot add -chardev id=${dev.id}: another -chardev has that id`);
        }
        c.chardevs.set(dev.id, dev);
      }
      return;
    case QMP_OPTION:
      c.qmp.push({ qmp: parseQmp(value) });
      return;
    case MON_OPTION:
      c.qmp.push({ mon: parseMon(value) });
      return;
    case INCOMING_OPTION:
      c.incoming = parseIncoming(value);
      return;
    case OBJECT_OPTION:
      for (const v of occ.values) addUnique(c.objects, parseObject(v), "-object");
      return;
    case GLOBAL_OPTION:
      for (const v of occ.values) parseGlobal(v, c.globals);
      return;
    case DRIVE_OPTION:
      for (const v of occ.values) addUnique(c.drives, parseDrive(v), "-drive");
      return;
    case DEVICE_OPTION:
      for (const v of occ.values) c.devices.push(parseDevice(v));
      return;
    case NETDEV_OPTION:
      for (const v of occ.values) addUnique(c.netdevs, parseNetdev(v), "-netdev");
      return;
    case NAME_OPTION:
      c.name = parseName(value);
      return;
    case LOG_OPTION:
      if (occ.values.length > 0) c.logFile = value;
      return;
    case HELP_OPTION:
      throw new TypeError(`Cannot start a VM with ${occ.spelled}: run 'ferry -help' alone to print the help`);
  }
  throw new TypeError(`Unknown option '${occ.spelled}': see 'ferry -help'`);
}

function checkSharedFiles(drives: readonly DriveConfig[]): void {
  // StratoVirt add_drive_file: one image may back several drives only if all are read-only.
  const byFile = new Map<string, DriveConfig>();
  for (const d of drives) {
    const other = byFile.get(d.file);
    if (other && !(other.readonly && d.readonly)) {
      throw new TypeError(
        `Cannot add -drive id=${d.id}: file '${d.file}' is also drive '${other.id}'; share an image only readonly=on`,
      );
    }
    byFile.set(d.file, d);
  }
}

/**
 * Parses a ferry (StratoVirt-dialect) command line.
 * @param argv the arguments without the program name
 * @returns the configuration, with StratoVirt's defaults for what is not given
 * @throws {TypeError} on an unknown option or key, a missing or unsupported value, a duplicate
 * id or a dangling reference; {SyntaxError} on a malformed value; {RangeError} on a value out of
 * range. Every message is one line that names the option.
 * @example
 * ```ts
 * const config = parseArgs(["-machine", "q35", "-m", "2G", "-smp", "2", "-kernel", "vmlinux.bin"]);
 * config.memoryBytes; // 2147483648
 * ```
 */
export function parseArgs(argv: readonly string[]): MachineConfig {
  const c: Collected = {
    machine: DEFAULT_MACHINE,
    memoryBytes: DEFAULT_MEMORY_BYTES,
    cpus: DEFAULT_CPUS,
    appends: [],
    chardevs: new Map(),
    qmp: [],
    objects: [],
    globals: {},
    drives: [],
    devices: [],
    netdevs: [],
  };
  for (const occ of tokenize(argv, OPTIONS)) collect(occ, c);

  const usedChardevs = new Set<string>();
  const use = (id: string) => void usedChardevs.add(id);
  const serial = c.serial ? resolveSerial(c.serial, c.chardevs, use) : DEFAULT_SERIAL;
  const qmp = c.qmp.map((e) => "qmp" in e ? e.qmp : resolveMon(e.mon, c.chardevs, use));
  const paths = new Set<string>();
  for (const q of qmp) {
    if (paths.has(q.path)) {
      throw new TypeError(`Cannot listen for QMP twice on '${q.path}': give each -qmp/-mon its own socket`);
    }
    paths.add(q.path);
  }
  for (const id of c.chardevs.keys()) {
    if (!usedChardevs.has(id)) {
      throw new TypeError(
        `Cannot use -chardev id=${id}: nothing uses it (ferry takes chardevs for -serial chardev:ID and -mon chardev=ID)`,
      );
    }
  }
  checkSharedFiles(c.drives);
  const notices = relocateFromHostBridge(c.devices);
  checkDevices(c.devices, c.drives, c.netdevs);
  const kernel = parseKernel(c.kernel, c.appends, c.initrd);

  const config: MachineConfig = {
    machine: c.machine,
    memoryBytes: c.memoryBytes,
    cpus: c.cpus,
    serial,
    qmp,
    drives: c.drives,
    devices: c.devices,
    netdevs: c.netdevs,
    daemonize: false,
  };
  if (kernel) config.kernel = kernel;
  if (c.incoming) config.incoming = c.incoming;
  if (c.memPrealloc) config.memPrealloc = true;
  if (notices.length > 0) config.notices = notices;
  const creds = c.globals["tls-creds"];
  if (creds && !c.objects.some((o) => o.id === creds)) {
    throw new TypeError(`Cannot use -global migration.tls-creds=${creds}: no -object has id '${creds}'`);
  }
  if (c.objects.length > 0) config.objects = c.objects;
  if (Object.keys(c.globals).length > 0) config.migrationGlobals = c.globals;
  if (c.name !== undefined) config.name = c.name;
  if (c.logFile !== undefined) config.logFile = c.logFile;
  return config;
}
