/**
 * `-incoming tcp:HOST:PORT | unix:PATH` (StratoVirt `incoming.rs`: `parse_incoming_uri`).
 * StratoVirt takes only an IPv4 address; ferry also takes a host name and `[IPv6]`, and port 0
 * (listen on an ephemeral port, for tests), and QEMU's `defer` (listen only on QMP
 * `migrate-incoming`). `file:` (snapshot restore) is not supported yet.
 * @module
 */
import type { OptionInfo } from "./_kv.ts";
import type { IncomingConfig } from "./machine_config.ts";

/** `-incoming`. */
export const INCOMING_OPTION: OptionInfo = {
  name: "-incoming",
  arity: "one",
  repeat: false,
  form: "tcp:HOST:PORT | unix:PATH | defer",
  help: "wait for a live migration on this address instead of booting",
  status: "supported",
};

function bad(text: string, detail: string): TypeError {
  return new TypeError(
    `Cannot parse -incoming '${text}': ${detail}; expected -incoming ${INCOMING_OPTION.form}`,
  );
}

const HOST_NAME = /^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/;
const IPV6 = /^[0-9A-Fa-f:.]+$/;

/**
 * Parses `-incoming`.
 * @throws {TypeError} without a valid uri; for `file:`/`defer` (not supported yet)
 */
export function parseIncoming(text: string): IncomingConfig {
  if (text.startsWith("unix:")) {
    const path = text.slice(5);
    if (path === "") throw bad(text, "empty path");
    if (path.includes("\0")) throw bad(text, "NUL in path");
    return { kind: "unix", path };
  }
  if (text.startsWith("tcp:")) {
    const rest = text.slice(4);
    const colon = rest.lastIndexOf(":");
    if (colon < 0) throw bad(text, "no port");
    let host = rest.slice(0, colon);
    const portText = rest.slice(colon + 1);
    if (host.startsWith("[") && host.endsWith("]")) {
      host = host.slice(1, -1);
      if (!IPV6.test(host) || !host.includes(":")) throw bad(text, `'${host}' is not an IPv6 address`);
    } else if (host === "") {
      throw bad(text, "empty host (give an address to listen on, e.g. 0.0.0.0)");
    } else if (!HOST_NAME.test(host)) {
      throw bad(text, `'${host}' is not a host name or address (write IPv6 as [ADDR])`);
    }
    if (!/^[0-9]{1,5}$/.test(portText) || Number(portText) > 65535) {
      throw bad(text, `'${portText}' is not a port 0..65535`);
    }
    return { kind: "tcp", host, port: Number(portText) };
  }
  if (text === "defer") return { kind: "defer" };
  if (text.startsWith("file:") || text.startsWith("exec:") || text.startsWith("fd:")) {
    throw new TypeError(`Cannot use -incoming '${text}': ${text.split(":")[0]} is not supported yet`);
  }
  throw bad(text, "unknown transport");
}

/**
 * Writes an incoming address back as a URI, bracketing an IPv6 host, e.g. for the migration
 * transport's `parseMigrationUri`.
 */
export function formatIncoming(incoming: IncomingConfig): string {
  if (incoming.kind === "unix") return `unix:${incoming.path}`;
  if (incoming.kind === "defer") return "defer";
  const host = incoming.host.includes(":") ? `[${incoming.host}]` : incoming.host;
  return `tcp:${host}:${incoming.port}`;
}
