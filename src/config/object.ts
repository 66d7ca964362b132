/**
 * `-object` (QEMU's backend objects; ferry knows `tls-creds-x509`, the migration channel's TLS
 * credentials) and `-global migration.tls-creds=ID` / `-global migration.tls-hostname=NAME`
 * (QEMU's migration properties, so a destination can take its TLS settings on the command line).
 * @module
 */
import { type OptionInfo, OptionList, readId } from "./_kv.ts";
import type { TlsCredsObjectConfig } from "./machine_config.ts";

/** `-object`. */
export const OBJECT_OPTION: OptionInfo = {
  name: "-object",
  arity: "many",
  repeat: true,
  form: "tls-creds-x509,id=ID,dir=DIR[,endpoint=server|client][,verify-peer=on|off]",
  help: "TLS credentials for migration (QEMU's file names in DIR); other object types are not supported yet",
  status: "supported",
};

/** `-global`. */
export const GLOBAL_OPTION: OptionInfo = {
  name: "-global",
  arity: "many",
  repeat: true,
  form: "migration.tls-creds=ID | migration.tls-hostname=NAME",
  help: "migration defaults (QEMU's migration properties); device globals are not supported yet",
  status: "supported",
};

/**
 * Parses one `-object` value. QEMU's defaults: `endpoint=client`, `verify-peer=on`.
 * @throws {TypeError} for another object type, a missing id/dir, an unknown key or endpoint
 */
export function parseObject(text: string): TlsCredsObjectConfig {
  const list = new OptionList("-object", text, { implied: "qom-type", form: OBJECT_OPTION.form });
  const type = list.required("qom-type");
  if (type !== "tls-creds-x509") throw list.unsupported(`object type '${type}'`);
  list.only(["qom-type", "id", "dir", "endpoint", "verify-peer", "sanity-check"]);
  const id = readId(list);
  const dir = list.required("dir");
  const endpoint = list.string("endpoint") ?? "client";
  if (endpoint !== "server" && endpoint !== "client") {
    throw list.invalid(`'endpoint=${endpoint}' is not server or client`);
  }
  return { type: "tls-creds-x509", id, dir, endpoint, verifyPeer: list.bool("verify-peer", true) };
}

/** Migration defaults from `-global migration.*`. */
export interface MigrationGlobals {
  "tls-creds"?: string;
  "tls-hostname"?: string;
}

/**
 * Parses one `-global` value into `into`.
 * @throws {TypeError} for anything but `migration.tls-creds` / `migration.tls-hostname`
 */
export function parseGlobal(text: string, into: MigrationGlobals): void {
  const eq = text.indexOf("=");
  const prop = eq < 0 ? text : text.slice(0, eq);
  if (eq < 0) {
    throw new SyntaxError(
      `Cannot parse -global '${text}': want DRIVER.PROPERTY=VALUE; expected -global ${GLOBAL_OPTION.form}`,
    );
  }
  if (prop !== "migration.tls-creds" && prop !== "migration.tls-hostname") {
    throw new TypeError(
      `Cannot use -global '${text}': '${prop}' is not supported yet (ferry takes ${GLOBAL_OPTION.form})`,
    );
  }
  into[prop === "migration.tls-creds" ? "tls-creds" : "tls-hostname"] = text.slice(eq + 1);
}
