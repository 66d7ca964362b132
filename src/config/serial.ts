/**
 * `-serial` for the 16550 UART at COM1 (StratoVirt `chardev.rs`: `add_serial`, one serial only).
 *
 * Accepted: `stdio`; `file,path=P` (StratoVirt) and `file:P` (QEMU); `chardev:ID` naming a stdio
 * or file `-chardev`; `none` and `null` (output discarded). Without `-serial` the UART exists and
 * its output is discarded (`none`): StratoVirt adds no serial by default, QEMU would use a
 * monitor multiplexed on stdio, which ferry does not have. `pty`, `socket`, `unix:`, `tcp:` and
 * `mon:stdio` are refused as not supported yet.
 * @module
 */
import { type OptionInfo, OptionList } from "./_kv.ts";
import type { Chardev } from "./chardev.ts";
import type { SerialConfig } from "./machine_config.ts";

/** `-serial`. */
export const SERIAL_OPTION: OptionInfo = {
  name: "-serial",
  arity: "one",
  repeat: false,
  form: "stdio | file,path=PATH | file:PATH | chardev:ID | none",
  help: "where ttyS0 goes; none discards its output. Default none",
  status: "supported",
};

/** The serial when no `-serial` is given. */
export const DEFAULT_SERIAL: SerialConfig = { kind: "none" };

/** A parsed `-serial` that may still name a chardev. */
export type SerialRequest = SerialConfig | { kind: "chardev"; id: string };

function bad(text: string, detail: string): TypeError {
  return new TypeError(`Cannot parse -serial '${text}': ${detail}; expected -serial ${SERIAL_OPTION.form}`);
}

function unsupported(text: string, what: string): TypeError {
  return new TypeError(`Cannot use -serial '${text}': ${what} is not supported yet`);
}

/**
 * Parses `-serial`.
 * @throws {TypeError} on an unknown or unsupported form
 */
export function parseSerial(text: string): SerialRequest {
  if (text === "stdio") return { kind: "stdio" };
  if (text === "none" || text === "null") return { kind: "none" };
  if (text.startsWith("file:")) {
    const path = text.slice(5);
    if (path === "") throw bad(text, "empty path");
    return { kind: "file", path };
  }
  if (text.startsWith("chardev:")) {
    const id = text.slice(8);
    if (id === "" || id.includes(":")) throw bad(text, "bad chardev id");
    return { kind: "chardev", id };
  }
  const list = new OptionList("-serial", text, { implied: "backend", form: SERIAL_OPTION.form });
  const backend = list.required("backend");
  if (backend === "file") {
    list.only(["backend", "path"]);
    return { kind: "file", path: list.required("path") };
  }
  if (backend === "stdio") {
    list.only(["backend"]);
    return { kind: "stdio" };
  }
  if (
    ["pty", "socket", "vc", "mon:stdio"].includes(backend) || /^(unix|tcp|telnet|udp|pipe|mon):/.test(backend)
  ) {
    throw unsupported(text, `a ${backend.split(":")[0]} serial`);
  }
  throw bad(text, `unknown backend '${backend}'`);
}

/**
 * Resolves `chardev:ID` against the chardevs.
 * @param used marks the chardev as used
 * @throws {TypeError} when no chardev has that id or it is a socket
 */
export function resolveSerial(
  request: SerialRequest,
  chardevs: ReadonlyMap<string, Chardev>,
  used: (id: string) => void,
): SerialConfig {
  if (request.kind !== "chardev") return request;
  const text = `chardev:${request.id}`;
  const dev = chardevs.get(request.id);
  if (!dev) throw new TypeError(`Cannot use -serial '${text}': no -chardev has id=${request.id}`);
  used(request.id);
  if (dev.kind === "stdio") return { kind: "stdio" };
  if (dev.kind === "file") return { kind: "file", path: dev.path };
  throw unsupported(text, "a serial on a socket chardev");
}
