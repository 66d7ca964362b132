/**
 * `-incoming tcp:HOST:PORT | unix:PATH | file:PATH | defer` (StratoVirt `incoming.rs`:
 * `parse_incoming_uri`). StratoVirt takes only an IPv4 address; ferry also takes a host name and
 * `[IPv6]`, and port 0 (listen on an ephemeral port, for tests), `file:PATH` (restore a snapshot
 * written by `migrate file:PATH`, as QEMU ≥ 8.2) and QEMU's `defer` (listen only on QMP
 * `migrate-incoming`). The grammar is the migration URI's own (migration/uri.ts), parsed once.
 * @module
 */
import type { OptionInfo } from "./_kv.ts";
import type { IncomingConfig } from "./machine_config.ts";
import { formatMigrationUri, MigrationUriError, parseMigrationUri } from "../migration/uri.ts";

/** `-incoming`. */
export const INCOMING_OPTION: OptionInfo = {
  name: "-incoming",
  arity: "one",
  repeat: false,
  form: "tcp:HOST:PORT | unix:PATH | file:PATH | defer",
  help: "wait for a live migration on this address, or restore a snapshot file, instead of booting",
  status: "supported",
};

/**
 * Parses `-incoming` with the one migration URI grammar (migration/uri.ts), port 0 allowed.
 * @throws {TypeError} without a valid uri, naming the accepted forms
 */
export function parseIncoming(text: string): IncomingConfig {
  if (text === "defer") return { kind: "defer" };
  try {
    return parseMigrationUri(text, { listen: true });
  } catch (e) {
    if (!(e instanceof MigrationUriError)) throw e;
    throw new TypeError(
      `Cannot parse -incoming '${text}': ${e.detail}; expected -incoming ${INCOMING_OPTION.form}`,
    );
  }
}

/** Writes an incoming address back as its canonical text (an IPv6 host bracketed). */
export function formatIncoming(incoming: IncomingConfig): string {
  return incoming.kind === "defer" ? "defer" : formatMigrationUri(incoming);
}
