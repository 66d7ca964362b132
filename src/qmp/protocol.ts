/**
 * QMP wire types and encoding: the greeting, `{"return":…}` and `{"error":…}` replies, events, and
 * {@link QmpError}, the one error type a command handler throws to pick a QMP error class.
 *
 * Every line ferry writes ends in CRLF, as QEMU's and StratoVirt's do.
 * @module
 */

/** The error classes ferry replies with (QEMU's names; StratoVirt uses the same subset). */
export type QmpErrorClass =
  | "GenericError"
  | "CommandNotFound"
  | "DeviceNotFound"
  | "DeviceNotActive"
  | "KVMMissingCap"
  | "MigrationExpected";

/**
 * A failure a QMP client sees as `{"error":{"class":…,"desc":…}}`. Command handlers throw it to
 * refuse; any other exception a handler throws becomes a `GenericError` with its message.
 *
 * @example
 * ```ts
 * throw new QmpError("GenericError", "There's a migration process in progress");
 * ```
 */
export class QmpError extends Error {
  /** The QMP error class sent as `class`. */
  readonly errorClass: QmpErrorClass;

  /**
   * @param errorClass the QMP `class`
   * @param desc the human-readable `desc` (sentence case, no final period)
   * @param options `cause`, kept for logs, never sent
   */
  constructor(errorClass: QmpErrorClass, desc: string, options?: ErrorOptions) {
    super(desc, options);
    this.name = "QmpError";
    this.errorClass = errorClass;
  }

  /** The text sent as `desc`. */
  get desc(): string {
    return this.message;
  }
}

/** A version triple as QMP spells it. */
export interface QmpVersionNumber {
  major: number;
  minor: number;
  micro: number;
}

/** ferry's own version, sent in the greeting and by `query-version`. */
export const FERRY_VERSION: QmpVersionNumber = { major: 0, minor: 1, micro: 0 };

/**
 * The `version` object of the greeting and of `query-version`: `{"qemu":{…},"package":"ferry-X.Y.Z"}`.
 *
 * The numbers sit under the key `qemu`, as StratoVirt does (`qmp_response.rs`), because clients such
 * as QEMU's python `qemu.qmp` and libvirt read `version.qemu`; unlike StratoVirt (which sends a fake
 * QEMU 5.0.1) the numbers are ferry's own, and `package` names ferry.
 * @param version the numbers to report
 */
export function versionInfo(version: QmpVersionNumber = FERRY_VERSION): Record<string, unknown> {
  return {
    qemu: { micro: version.micro, minor: version.minor, major: version.major },
    package: `ferry-${version.major}.${version.minor}.${version.micro}`,
  };
}

/** The greeting sent on connect: `{"QMP":{"version":…,"capabilities":[]}}`. */
export function greeting(version: QmpVersionNumber = FERRY_VERSION): Record<string, unknown> {
  return { QMP: { version: versionInfo(version), capabilities: [] } };
}

/** A QMP timestamp: wall-clock seconds and microseconds. */
export interface QmpTimestamp {
  seconds: number;
  microseconds: number;
}

/** The current wall-clock time as a QMP timestamp (microsecond resolution). */
export function timestamp(): QmpTimestamp {
  const us = Math.floor((performance.timeOrigin + performance.now()) * 1000);
  return { seconds: Math.floor(us / 1e6), microseconds: us % 1e6 };
}

/** A JSON value a client may send as `id`; echoed unchanged. */
export type QmpId = unknown;

/** `{"return": value, "id": id}`; `id` only when the request had one. */
export function returnReply(value: unknown, id?: QmpId): Record<string, unknown> {
  return id === undefined ? { return: value } : { return: value, id };
}

/** `{"error":{"class","desc"}, "id": id}`; `id` only when known. */
export function errorReply(error: QmpError, id?: QmpId): Record<string, unknown> {
  const body = { class: error.errorClass, desc: error.desc };
  return id === undefined ? { error: body } : { error: body, id };
}

/**
 * An event, StratoVirt style: `data` is always present (`{}` when empty).
 * @param name e.g. `"STOP"`
 * @param data the event's `data` object
 * @param at when it happened (default now)
 */
export function eventMessage(
  name: string,
  data: Record<string, unknown> = {},
  at: QmpTimestamp = timestamp(),
): Record<string, unknown> {
  return { event: name, data, timestamp: at };
}

// JSON.rawJSON (V8 ≥ 11.4) lets a bigint go out as an exact JSON number.
const rawJson = (JSON as unknown as { rawJSON?: (text: string) => unknown }).rawJSON;

function replacer(_key: string, value: unknown): unknown {
  if (typeof value !== "bigint") return value;
  return rawJson ? rawJson(value.toString()) : Number(value);
}

/**
 * One reply line with the request's `id` spliced in as its source text, so the id goes back byte for
 * byte (an integer past 2^53 or 2^64 is not rounded, `1.50` stays `1.50`).
 * @param reply `{"return":…}` or `{"error":…}` without `id`
 * @param idText the id's JSON text as the client wrote it (minified), or undefined for no `id`
 * @throws TypeError when `reply` cannot be serialised (cycles)
 */
export function encodeReplyLine(reply: Record<string, unknown>, idText?: string): string {
  const json = JSON.stringify(reply, replacer);
  if (idText === undefined) return json + "\r\n";
  return `${json.slice(0, -1)},"id":${idText}}\r\n`;
}

/**
 * One wire line: compact JSON plus CRLF. `bigint` values are written as exact JSON numbers.
 * @throws TypeError when `message` cannot be serialised (cycles)
 */
export function encodeLine(message: unknown): string {
  return JSON.stringify(message, replacer) + "\r\n";
}
