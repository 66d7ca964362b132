/**
 * `-netdev tap,id=ID,ifname=NAME | tap,id=ID,fd=N` (StratoVirt `network.rs`: `NetDevcfg`).
 *
 * Refused as not supported yet: `vhost=on` (vhost-net) and `vhostfd`, `vhost-user`, multiqueue
 * (`queues` above 1, `fds`), `path=`, `macnat=on`. QEMU's `script=no`/`downscript=no` are accepted
 * (ferry runs no scripts); other script values are refused.
 * @module
 */
import { type OptionInfo, OptionList, readId } from "./_kv.ts";
import type { NetdevConfig } from "./machine_config.ts";

/** `-netdev`. */
export const NETDEV_OPTION: OptionInfo = {
  name: "-netdev",
  arity: "many",
  repeat: true,
  form: "tap,id=ID,ifname=NAME | tap,id=ID,fd=N",
  help: "host tap backend for -device virtio-net-pci,netdev=ID",
  status: "supported",
};

/** Linux `IFNAMSIZ` less the NUL. */
export const MAX_IFNAME_BYTES = 15;

const KEYS = [
  "type",
  "id",
  "ifname",
  "fd",
  "fds",
  "vhost",
  "vhostfd",
  "vhostfds",
  "queues",
  "path",
  "macnat",
  "chardev",
  "script",
  "downscript",
] as const;

/**
 * Parses `-netdev`.
 * @throws {TypeError} on another type, an unknown key, no ifname/fd or an unsupported setting
 */
export function parseNetdev(text: string): NetdevConfig {
  const list = new OptionList("-netdev", text, { implied: "type", form: NETDEV_OPTION.form });
  const type = list.required("type");
  if (type === "vhost-user") throw list.unsupported("netdev vhost-user");
  if (type !== "tap") throw list.invalid(`netdev type '${type}' is not supported: ferry has tap`);
  list.only(KEYS);
  const id = readId(list);
  if (list.bool("vhost", false)) throw list.unsupported("vhost=on (vhost-net)");
  if (list.has("vhostfd") || list.has("vhostfds")) throw list.invalid("vhostfd needs vhost=on");
  if (list.has("fds")) throw list.unsupported("fds (multiqueue tap)");
  const queues = list.int("queues", { min: 1, max: 16 });
  if (queues !== undefined && queues > 1) throw list.unsupported(`queues=${queues} (multiqueue tap)`);
  if (list.has("path")) throw list.unsupported("path (tap by device path)");
  if (list.bool("macnat", false)) throw list.unsupported("macnat=on");
  if (list.has("chardev")) throw list.invalid("'chardev' applies only to vhost-user");
  for (const key of ["script", "downscript"]) {
    const v = list.string(key);
    if (v !== undefined && v !== "no") throw list.unsupported(`${key}=${v} (only ${key}=no)`);
  }
  const netdev: NetdevConfig = { kind: "tap", id };
  const ifname = list.string("ifname");
  if (ifname !== undefined) {
    if (new TextEncoder().encode(ifname).length > MAX_IFNAME_BYTES) {
      throw list.range(`ifname '${ifname}' is longer than ${MAX_IFNAME_BYTES} bytes`);
    }
    netdev.ifname = ifname;
  }
  const fd = list.int("fd", { min: 0, max: 0x7fffffff });
  if (fd !== undefined) netdev.fd = fd;
  if (ifname === undefined && fd === undefined) throw list.invalid("missing 'ifname' or 'fd'");
  return netdev;
}
