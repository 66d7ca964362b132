/**
 * The one grammar of migration URIs, parsed once where the text enters ferry (`-incoming`, QMP
 * `migrate` / `migrate-incoming`) and passed on as a {@linkcode MigrationUri}:
 *
 * | form            | meaning                                                             |
 * |-----------------|---------------------------------------------------------------------|
 * | `tcp:HOST:PORT` | HOST a name, an IPv4 address or `[IPv6]`; port 0 only to listen     |
 * | `unix:PATH`     | a unix socket                                                       |
 * | `file:PATH`     | a snapshot file (QEMU ≥ 8.2's `file:`; QEMU 7.2 uses `exec:cat`)    |
 *
 * QEMU's `exec:`, `fd:` and `rdma:` are refused by name; `file:PATH,offset=N` is refused too.
 * @module
 */

/** A parsed migration URI; `uri` is the canonical text ({@linkcode formatMigrationUri}). */
export type MigrationUri =
  /** `tcp:HOST:PORT` (HOST without brackets). */
  | { kind: "tcp"; uri: string; host: string; port: number }
  /** `unix:PATH`. */
  | { kind: "unix"; uri: string; path: string }
  /** `file:PATH`: a snapshot written by `migrate`, read by `-incoming` (snapshot_file.ts). */
  | { kind: "file"; uri: string; path: string };

/** A URI with a peer behind it (transport.ts): `tcp:` or `unix:`. */
export type SocketMigrationUri = Exclude<MigrationUri, { kind: "file" }>;

/** Why a URI does not parse; `detail` is the reason without the URI, for callers that wrap it. */
export class MigrationUriError extends TypeError {
  override name = "MigrationUriError";
  /** The reason alone, e.g. `empty path`. */
  readonly detail: string;
  constructor(uri: string, detail: string) {
    super(`Cannot parse migration uri '${uri}': ${detail}`);
    this.detail = detail;
  }
}

/** The accepted forms, for messages. */
export const MIGRATION_URI_FORMS = "tcp:HOST:PORT, unix:PATH or file:PATH";

const HOST_NAME = /^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/;
const IPV6 = /^[0-9A-Fa-f:.]+$/;

function path(uri: string, kind: "unix" | "file"): string {
  const p = uri.slice(kind.length + 1);
  if (p === "") throw new MigrationUriError(uri, "empty path");
  if (p.includes("\0")) throw new MigrationUriError(uri, "NUL in path");
  if (kind === "file" && /,offset=/.test(p)) {
    throw new MigrationUriError(uri, "file:PATH,offset= is not supported");
  }
  return p;
}

/**
 * Parses a migration URI (table above).
 * @param uri the `-incoming` value or the QMP `uri` argument
 * @param options `listen: true` allows port 0 (an ephemeral port, for tests)
 * @throws {MigrationUriError} naming the uri and the reason
 * @example
 * ```ts
 * parseMigrationUri("tcp:[::1]:4446"); // { kind: "tcp", uri: "tcp:[::1]:4446", host: "::1", port: 4446 }
 * parseMigrationUri("file:/var/lib/vm.snap").kind; // "file"
 * ```
 */
export function parseMigrationUri(uri: string, options: { listen?: boolean } = {}): MigrationUri {
  if (uri.startsWith("unix:")) return { kind: "unix", uri, path: path(uri, "unix") };
  if (uri.startsWith("file:")) return { kind: "file", uri, path: path(uri, "file") };
  if (uri.startsWith("tcp:")) {
    const rest = uri.slice(4);
    const colon = rest.lastIndexOf(":");
    if (colon < 0) throw new MigrationUriError(uri, "want tcp:HOST:PORT");
    let host = rest.slice(0, colon);
    const portText = rest.slice(colon + 1);
    if (host.startsWith("[") && host.endsWith("]")) {
      host = host.slice(1, -1);
      if (!IPV6.test(host) || !host.includes(":")) {
        throw new MigrationUriError(uri, `'${host}' is not an IPv6 address`);
      }
    } else if (host.includes(":")) {
      throw new MigrationUriError(uri, "write an IPv6 host as [ADDR]");
    } else if (host === "") {
      throw new MigrationUriError(uri, "empty host (give an address, e.g. 0.0.0.0 to listen on all)");
    } else if (!HOST_NAME.test(host)) {
      throw new MigrationUriError(uri, `'${host}' is not a host name or address`);
    }
    if (!/^[0-9]{1,5}$/.test(portText)) throw new MigrationUriError(uri, `bad port '${portText}'`);
    const port = Number(portText);
    const min = options.listen ? 0 : 1;
    if (port < min || port > 65535) {
      throw new MigrationUriError(uri, `port ${port} is outside ${min}..65535`);
    }
    return { kind: "tcp", uri: formatTcp(host, port), host, port };
  }
  const scheme = /^(exec|fd|rdma):/.exec(uri)?.[1];
  if (scheme) throw new MigrationUriError(uri, `${scheme}: is not supported; want ${MIGRATION_URI_FORMS}`);
  throw new MigrationUriError(uri, `want ${MIGRATION_URI_FORMS}`);
}

function formatTcp(host: string, port: number): string {
  return `tcp:${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/**
 * The canonical text of a parsed URI (an IPv6 host bracketed), which parses back to the same value.
 */
export function formatMigrationUri(u: MigrationUri): string {
  return u.kind === "tcp" ? formatTcp(u.host, u.port) : `${u.kind}:${u.path}`;
}
