/**
 * `-drive id=ID,file=PATH[,readonly=on|off][,direct=on|off]...` (StratoVirt `drive.rs`:
 * `DriveConfig`; `readonly` defaults off, `direct` on; `aio` defaults to native with direct, off
 * without, and the same two combinations are refused).
 *
 * Accepted and ignored: `aio` (ferry always uses io_uring, or pread/pwrite where the kernel refuses
 * io_uring; the guest cannot tell). Refused as not
 * supported yet: `if=pflash`, `format=qcow2`, `media=cdrom`, `discard=unmap`, `detect-zeroes`
 * other than off, `throttling.iops-total`, and the qcow2 cache sizes. `serial=` is QEMU's legacy
 * spelling; StratoVirt's is on `-device virtio-blk-pci`.
 * @module
 */
import { type OptionInfo, OptionList, readId } from "./_kv.ts";
import type { DriveConfig } from "./machine_config.ts";

/** `-drive`. */
export const DRIVE_OPTION: OptionInfo = {
  name: "-drive",
  arity: "many",
  repeat: true,
  form: "id=ID,file=PATH[,readonly=on|off][,direct=on|off][,format=raw][,aio=native|io_uring|off][,serial=S]",
  help: "raw disk image for -device virtio-blk-pci,drive=ID. Defaults readonly=off,direct=on",
  status: "supported",
};

/** virtio-blk's serial (`VIRTIO_BLK_ID_BYTES`): StratoVirt `MAX_SERIAL_NUM_LEN`. */
export const MAX_BLK_SERIAL_BYTES = 20;

const KEYS = [
  "id",
  "file",
  "readonly",
  "direct",
  "serial",
  "if",
  "format",
  "aio",
  "media",
  "discard",
  "detect-zeroes",
  "throttling.iops-total",
  "iops",
  "unit",
  "l2-cache-size",
  "refcount-cache-size",
] as const;

/**
 * Checks a block serial's length.
 * @throws {RangeError} above 20 bytes
 */
export function checkBlkSerial(list: OptionList, serial: string): string {
  if (new TextEncoder().encode(serial).length > MAX_BLK_SERIAL_BYTES) {
    throw list.range(`serial '${serial}' is longer than ${MAX_BLK_SERIAL_BYTES} bytes`);
  }
  return serial;
}

/**
 * Parses `-drive`.
 * @throws {TypeError} on an unknown key, a missing id or file, or an unsupported setting;
 * {SyntaxError} on a malformed list or a bad on/off
 */
export function parseDrive(text: string): DriveConfig {
  const list = new OptionList("-drive", text, { form: DRIVE_OPTION.form });
  list.only(KEYS);
  const iface = list.string("if") ?? "none";
  if (iface === "pflash") throw list.unsupported("if=pflash (firmware flash)");
  if (iface !== "none") throw list.invalid(`if=${iface} is not none`);
  if (list.has("unit")) throw list.invalid("'unit' applies only to if=pflash");
  const id = readId(list);
  const file = list.required("file");
  const readonly = list.bool("readonly", false);
  const direct = list.bool("direct", true);
  const format = list.string("format") ?? "raw";
  if (format === "qcow2") throw list.unsupported("format=qcow2");
  if (format !== "raw") throw list.invalid(`format=${format} is not raw or qcow2`);
  const aio = list.string("aio") ?? (direct ? "native" : "off");
  if (!["native", "io_uring", "off"].includes(aio)) {
    throw list.invalid(`aio=${aio} is not native, io_uring or off`);
  }
  if (aio === "native" && !direct) throw list.invalid("aio=native needs direct=on");
  if (aio === "off" && direct) throw list.invalid("direct=on needs aio=native or io_uring");
  const media = list.string("media") ?? "disk";
  if (media === "cdrom") throw list.unsupported("media=cdrom");
  if (media !== "disk") throw list.invalid(`media=${media} is not disk or cdrom`);
  const discard = list.string("discard") ?? "ignore";
  if (["unmap", "on", "true", "yes"].includes(discard)) throw list.unsupported(`discard=${discard}`);
  if (!["ignore", "off", "false", "no"].includes(discard)) {
    throw list.invalid(`discard=${discard} is not unmap or ignore`);
  }
  const zeroes = list.string("detect-zeroes") ?? "off";
  if (zeroes === "on" || zeroes === "unmap") throw list.unsupported(`detect-zeroes=${zeroes}`);
  if (zeroes !== "off") throw list.invalid(`detect-zeroes=${zeroes} is not on, unmap or off`);
  for (const key of ["throttling.iops-total", "iops", "l2-cache-size", "refcount-cache-size"]) {
    if (list.has(key)) throw list.unsupported(key);
  }
  const drive: DriveConfig = { id, file, readonly, direct };
  const serial = list.string("serial");
  if (serial !== undefined) drive.serial = checkBlkSerial(list, serial);
  return drive;
}
