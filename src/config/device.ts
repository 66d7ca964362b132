/**
 * `-device DRIVER,id=ID,bus=pcie.0,addr=SLOT[.FN],...` (StratoVirt `virtio/src/device/block.rs`
 * `VirtioBlkDevConfig`, `network.rs` `NetworkInterfaceConfig`, `pci.rs` `get_pci_df`; the driver
 * list from `machine/src/lib.rs` `create_device_add_matches!`).
 *
 * ferry has `virtio-blk-pci` and `virtio-net-pci`; every other StratoVirt driver is refused as not
 * supported yet, anything else as unknown. Like StratoVirt, PCI devices need `bus` and `addr`;
 * there is one bus, `pcie.0`. Refused as not supported yet: `iothread`s, `mq=on`. Validated and
 * passed on in `props` for the device to honour: `multifunction`, `bootindex`, `num-queues`,
 * `queue-size`, `vectors`, `serial`, `mac`.
 * @module
 */
import { type OptionInfo, OptionList, readId } from "./_kv.ts";
import { checkBlkSerial } from "./drive.ts";
import type { DeviceConfig, DriveConfig, NetdevConfig } from "./machine_config.ts";
import { formatPciAddr, parsePciAddr } from "../devices/pci/pci_address.ts";
import { formatMac, parseMac } from "../devices/virtio/net/mac.ts";

export { formatPciAddr, parsePciAddr } from "../devices/pci/pci_address.ts";

/** `-device`. */
export const DEVICE_OPTION: OptionInfo = {
  name: "-device",
  arity: "many",
  repeat: true,
  form: "virtio-blk-pci,id=ID,drive=DRIVE,bus=pcie.0,addr=SLOT[.FN][,serial=S] | " +
    "virtio-net-pci,id=ID,netdev=NETDEV,bus=pcie.0,addr=SLOT[.FN][,mac=MAC]",
  help: "a PCI device on pcie.0: virtio-blk-pci or virtio-net-pci",
  status: "supported",
};

/** Drivers ferry implements. */
export const SUPPORTED_DRIVERS = ["virtio-blk-pci", "virtio-net-pci"] as const;

/** StratoVirt's other drivers: refused as not supported yet. */
export const LATER_DRIVERS: readonly string[] = [
  "virtio-blk-device",
  "virtio-net-device",
  "vhost-user-blk-device",
  "vhost-user-blk-pci",
  "vhost-vsock-device",
  "vhost-vsock-pci",
  "vhost-user-fs-device",
  "vhost-user-fs-pci",
  "vhost-user-gpu-pci",
  "vfio-pci",
  "virtio-balloon-device",
  "virtio-balloon-pci",
  "virtio-rng-device",
  "virtio-rng-pci",
  "virtio-serial-device",
  "virtio-serial-pci",
  "virtconsole",
  "virtserialport",
  "virtio-mem-device",
  "virtio-mem-pci",
  "virtio-pmem-device",
  "virtio-pmem-pci",
  "virtio-input-device",
  "virtio-input-pci",
  "virtio-multitouch-device",
  "virtio-multitouch-pci",
  "virtio-gpu-pci",
  "virtio-scsi-pci",
  "scsi-hd",
  "scsi-cd",
  "pcie-root-port",
  "nec-usb-xhci",
  "usb-kbd",
  "usb-tablet",
  "usb-consumer",
  "usb-storage",
  "usb-uas",
  "usb-camera",
  "usb-host",
  "ramfb",
  "pvpanic",
  "ivshmem-scream",
];

/** The only PCI bus until root ports exist. */
export const ROOT_BUS = "pcie.0";

const COMMON_KEYS = ["driver", "id", "bus", "addr", "multifunction"] as const;
const BLK_KEYS = [...COMMON_KEYS, "drive", "serial", "bootindex", "num-queues", "queue-size", "iothread"];
const NET_KEYS = [
  ...COMMON_KEYS,
  "netdev",
  "mac",
  "mq",
  "queue-size",
  "vectors",
  "iothread",
  "rx-iothread",
  "tx-iothread",
];

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

function readQueueSize(list: OptionList, min: number, max: number): string | undefined {
  const size = list.int("queue-size", { min, max });
  if (size === undefined) return undefined;
  if (!isPowerOfTwo(size)) throw list.range(`queue-size=${size} is not a power of 2`);
  return String(size);
}

function refuseIothreads(list: OptionList): void {
  for (const key of ["iothread", "rx-iothread", "tx-iothread"]) {
    if (list.has(key)) throw list.unsupported(`${key} (-object iothread)`);
  }
}

/**
 * Parses one `-device`.
 * @throws {TypeError} on an unsupported or unknown driver, an unknown key, a missing id, bus, addr,
 * drive or netdev, another bus; {RangeError}/{SyntaxError} on a bad value
 */
export function parseDevice(text: string): DeviceConfig {
  const list = new OptionList("-device", text, { implied: "driver", form: DEVICE_OPTION.form });
  const driver = list.required("driver");
  if (LATER_DRIVERS.includes(driver)) {
    throw new TypeError(
      `Device driver '${driver}' is not supported yet: -device accepts ${SUPPORTED_DRIVERS.join(", ")}`,
    );
  }
  if (driver !== "virtio-blk-pci" && driver !== "virtio-net-pci") {
    throw new TypeError(
      `Device driver '${driver}' is unknown: -device accepts ${SUPPORTED_DRIVERS.join(", ")}`,
    );
  }
  list.only(driver === "virtio-blk-pci" ? BLK_KEYS : NET_KEYS);
  const id = readId(list);
  const bus = list.required("bus");
  if (bus !== ROOT_BUS) throw list.invalid(`bus '${bus}' does not exist (ferry has ${ROOT_BUS} only)`);
  const addrText = list.required("addr");
  const addr = parsePciAddr(addrText);
  if (typeof addr === "string") throw list.syntax(`addr '${addrText}': ${addr}`);
  refuseIothreads(list);
  const props: Record<string, string> = {};
  let mac: Uint8Array | undefined;
  if (list.has("multifunction")) props.multifunction = list.bool("multifunction", false) ? "on" : "off";
  if (driver === "virtio-blk-pci") {
    props.drive = list.required("drive");
    const serial = list.string("serial");
    if (serial !== undefined) props.serial = checkBlkSerial(list, serial);
    const bootindex = list.int("bootindex", { min: 0, max: 255 });
    if (bootindex !== undefined) props.bootindex = String(bootindex);
    const queues = list.int("num-queues", { min: 1, max: 32 });
    if (queues !== undefined) props["num-queues"] = String(queues);
    const size = readQueueSize(list, 4, 1024);
    if (size !== undefined) props["queue-size"] = size;
  } else {
    props.netdev = list.required("netdev");
    const macText = list.string("mac");
    if (macText !== undefined) {
      try {
        mac = parseMac(macText, id);
      } catch (e) {
        throw e instanceof RangeError
          ? list.invalid(`mac '${macText}' is a multicast address`)
          : list.syntax(`mac '${macText}' is not six hex bytes like 52:54:00:12:34:56`);
      }
      props.mac = formatMac(mac);
    }
    if (list.bool("mq", false)) throw list.unsupported("mq=on (multiqueue)");
    if (list.has("mq")) props.mq = "off";
    const size = readQueueSize(list, 256, 4096);
    if (size !== undefined) props["queue-size"] = size;
    const vectors = list.int("vectors", { min: 0, max: 0xffff });
    if (vectors !== undefined) props.vectors = String(vectors);
  }
  return { driver, id, bus, addr, props, ...(mac ? { mac } : {}) };
}

function where(d: DeviceConfig): string {
  return `-device ${d.driver},id=${d.id}`;
}

/**
 * Moves devices asked for at slot 0 of `pcie.0`, the q35 host bridge's slot, to the first slot no
 * device uses, keeping their function numbers, and says so.
 *
 * StratoVirt's own migration guide (`docs/migration.md`) writes `bus=pcie.0,addr=0`, yet its q35
 * puts the MCH host bridge at devfn 0 (`machine/src/x86_64/mch.rs`) and refuses a second device there
 * ("Location of the device … is same as one of the bus pcie.0"). ferry takes the next free slot
 * instead, so those command lines start; the choice depends on the command line alone, so a
 * migration source and its destination make the same one.
 * @param devices changed in place
 * @returns one line per moved device, for stderr
 */
export function relocateFromHostBridge(devices: DeviceConfig[]): string[] {
  const moving = devices.filter((d) => d.bus === ROOT_BUS && d.addr?.slot === 0);
  if (moving.length === 0) return [];
  const used = new Set(devices.flatMap((d) => d.bus === ROOT_BUS && d.addr ? [d.addr.slot] : []));
  let slot = 1;
  while (used.has(slot)) slot++;
  if (slot > 31) return []; // no free slot: placement reports the conflict
  return moving.map((d) => {
    const from = formatPciAddr(d.addr!);
    d.addr = { slot, fn: d.addr!.fn };
    return `${where(d)}: ${ROOT_BUS} addr ${from} is the q35 host bridge's; ` +
      `placed at ${formatPciAddr(d.addr)}, the first free slot`;
  });
}

/**
 * Cross-checks the devices with the drives and netdevs: unique ids, every `drive=`/`netdev=` names
 * one that exists and that no other device uses, no two devices at one address, and a function
 * other than 0 only beside a `multifunction=on` device at function 0.
 * @throws {TypeError} naming the device and the conflict
 */
export function checkDevices(
  devices: readonly DeviceConfig[],
  drives: readonly DriveConfig[],
  netdevs: readonly NetdevConfig[],
): void {
  const ids = new Set<string>();
  const driveUser = new Map<string, string>();
  const netdevUser = new Map<string, string>();
  const at = new Map<string, DeviceConfig>();
  for (const d of devices) {
    if (ids.has(d.id)) throw new TypeError(`Cannot add ${where(d)}: another -device has id=${d.id}`);
    ids.add(d.id);
    const [kind, ref, users, known] = d.driver === "virtio-blk-pci"
      ? ["drive", d.props.drive as string, driveUser, drives.some((x) => x.id === d.props.drive)] as const
      : [
        "netdev",
        d.props.netdev as string,
        netdevUser,
        netdevs.some((x) => x.id === d.props.netdev),
      ] as const;
    if (!known) {
      throw new TypeError(
        `Cannot add ${where(d)}: ${kind}=${ref} names no -${kind} (add -${kind} id=${ref},...)`,
      );
    }
    const other = users.get(ref);
    if (other !== undefined) {
      throw new TypeError(`Cannot add ${where(d)}: ${kind} '${ref}' is already used by device '${other}'`);
    }
    users.set(ref, d.id);
    if (d.addr) {
      const key = `${d.bus}/${d.addr.slot}.${d.addr.fn}`;
      const there = at.get(key);
      if (there) {
        throw new TypeError(
          `Cannot add ${where(d)}: ${d.bus} ${formatPciAddr(d.addr)} is taken by device '${there.id}'`,
        );
      }
      at.set(key, d);
    }
  }
  for (const d of devices) {
    if (!d.addr || d.addr.fn === 0) continue;
    const fn0 = at.get(`${d.bus}/${d.addr.slot}.0`);
    if (fn0?.props.multifunction !== "on") {
      throw new TypeError(
        `Cannot add ${where(d)} at function ${d.addr.fn}: slot 0x${
          d.addr.slot.toString(16)
        } needs a device ` +
          `at function 0 with multifunction=on`,
      );
    }
  }
}
