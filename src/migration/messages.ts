/**
 * Payload encoders and decoders of the migration messages (hello, config, reason, complete, state
 * sections, RAM run tables). Every decoder treats its input as hostile: lengths are checked against
 * the bounds in `wire.ts` before anything is allocated, and errors name the field.
 * @module
 */
import {
  MAX_CONFIG_BYTES,
  MAX_REASON_BYTES,
  MAX_RUNS_PER_MESSAGE,
  MAX_SECTION_BYTES,
  MAX_SECTION_ID_BYTES,
  ProtocolError,
  RAM_PREFIX_BYTES,
  type RamRun,
  RUN_BYTES,
  RUN_ZERO,
  WIRE_PAGE_SIZE,
} from "./wire.ts";

/** The hello payload. */
export interface Hello {
  pageSize: number;
  /** Source product and version, e.g. `"ferry 0.1.0"`. */
  product: string;
}

/** The config payload. */
export interface ConfigMessage {
  config: Record<string, string>;
  host: Record<string, string>;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

function encodeString16(s: string, max: number, what: string): Uint8Array {
  const bytes = encoder.encode(s);
  if (bytes.length > max) {
    throw new RangeError(`Cannot encode ${what} of ${bytes.length} bytes: limit is ${max}`);
  }
  const out = new Uint8Array(2 + bytes.length);
  new DataView(out.buffer).setUint16(0, bytes.length, true);
  out.set(bytes, 2);
  return out;
}

function decodeUtf8(b: Uint8Array, what: string): string {
  try {
    return decoder.decode(b);
  } catch {
    throw new ProtocolError(`Cannot decode ${what}: not valid UTF-8`);
  }
}

/** Encodes the hello payload: u32 page size, u16 product length, product (UTF-8). */
export function encodeHello(h: Hello): Uint8Array {
  const p = encodeString16(h.product, MAX_REASON_BYTES, "product version");
  const out = new Uint8Array(4 + p.length);
  new DataView(out.buffer).setUint32(0, h.pageSize, true);
  out.set(p, 4);
  return out;
}

/** Decodes the hello payload. */
export function decodeHello(b: Uint8Array): Hello {
  if (b.length < 6) throw new ProtocolError(`Cannot decode hello: ${b.length} bytes is too short`);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const pageSize = v.getUint32(0, true);
  const n = v.getUint16(4, true);
  if (6 + n !== b.length) {
    throw new ProtocolError(`Cannot decode hello: product length ${n} does not fit ${b.length} bytes`);
  }
  return { pageSize, product: decodeUtf8(b.subarray(6), "hello product") };
}

/** Encodes the config payload (JSON). */
export function encodeConfig(c: ConfigMessage): Uint8Array {
  const b = encoder.encode(JSON.stringify({ config: c.config, host: c.host }));
  if (b.length > MAX_CONFIG_BYTES) {
    throw new RangeError(`Cannot encode config of ${b.length} bytes: limit is ${MAX_CONFIG_BYTES}`);
  }
  return b;
}

function stringRecord(v: unknown, what: string): Record<string, string> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new ProtocolError(`Cannot decode config: '${what}' is not an object`);
  }
  const out: Record<string, string> = {};
  for (const [k, x] of Object.entries(v)) {
    if (typeof x !== "string") {
      throw new ProtocolError(`Cannot decode config: '${what}.${k}' is not a string`);
    }
    Object.defineProperty(out, k, { value: x, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

/** Decodes and validates the config payload. */
export function decodeConfig(b: Uint8Array): ConfigMessage {
  let v: unknown;
  try {
    v = JSON.parse(decodeUtf8(b, "config"));
  } catch (e) {
    if (e instanceof ProtocolError) throw e;
    throw new ProtocolError(`Cannot decode config: ${(e as Error).message}`);
  }
  if (typeof v !== "object" || v === null) throw new ProtocolError("Cannot decode config: not a JSON object");
  const o = v as Record<string, unknown>;
  return { config: stringRecord(o.config, "config"), host: stringRecord(o.host, "host") };
}

/** Encodes a nack/cancel reason (UTF-8, truncated to the bound on a character boundary). */
export function encodeReason(reason: string): Uint8Array {
  let b = encoder.encode(reason);
  if (b.length > MAX_REASON_BYTES) {
    b = b.subarray(0, MAX_REASON_BYTES);
    while (b.length > 0 && (b[b.length - 1]! & 0xc0) === 0x80) b = b.subarray(0, b.length - 1);
    if (b.length > 0 && b[b.length - 1]! >= 0xc0) b = b.subarray(0, b.length - 1);
  }
  return b;
}

/** Decodes a nack/cancel reason. */
export function decodeReason(b: Uint8Array): string {
  return decodeUtf8(b, "reason");
}

/** Encodes the `complete` payload: the number of sections sent (u32). */
export function encodeComplete(sectionCount: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, sectionCount, true);
  return b;
}

/** Decodes the `complete` payload. */
export function decodeComplete(b: Uint8Array): number {
  if (b.length !== 4) throw new ProtocolError(`Cannot decode complete: ${b.length} bytes, need 4`);
  return new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true);
}

/** A section on the wire: u16 id length, id (UTF-8), u32 version, u32 payload length, payload. */
export function encodeSection(s: { id: string; version: number; payload: Uint8Array }): Uint8Array {
  const id = encodeString16(s.id, MAX_SECTION_ID_BYTES, `section id '${s.id.slice(0, 40)}'`);
  if (s.payload.length > MAX_SECTION_BYTES) {
    throw new RangeError(
      `Cannot encode section '${s.id}' of ${s.payload.length} bytes: limit is ${MAX_SECTION_BYTES}`,
    );
  }
  if (!Number.isInteger(s.version) || s.version < 0 || s.version > 0xffffffff) {
    throw new RangeError(`Cannot encode section '${s.id}': version ${s.version} is not a u32`);
  }
  const out = new Uint8Array(id.length + 8 + s.payload.length);
  out.set(id, 0);
  const v = new DataView(out.buffer);
  v.setUint32(id.length, s.version, true);
  v.setUint32(id.length + 4, s.payload.length, true);
  out.set(s.payload, id.length + 8);
  return out;
}

/** Decodes one section (the payload is copied out of `b`). */
export function decodeSection(b: Uint8Array): { id: string; version: number; payload: Uint8Array } {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (b.length < 2) throw new ProtocolError(`Cannot decode state section: ${b.length} bytes is too short`);
  const idLen = v.getUint16(0, true);
  if (idLen === 0 || idLen > MAX_SECTION_ID_BYTES) {
    throw new ProtocolError(
      `Cannot decode state section: id length ${idLen} is outside 1..${MAX_SECTION_ID_BYTES}`,
    );
  }
  if (b.length < 2 + idLen + 8) {
    throw new ProtocolError(`Cannot decode state section: ${b.length} bytes is too short`);
  }
  const id = decodeUtf8(b.subarray(2, 2 + idLen), "section id");
  const version = v.getUint32(2 + idLen, true);
  const len = v.getUint32(2 + idLen + 4, true);
  if (len > MAX_SECTION_BYTES) {
    throw new ProtocolError(`Cannot decode state section '${id}': ${len} bytes exceeds ${MAX_SECTION_BYTES}`);
  }
  if (2 + idLen + 8 + len !== b.length) {
    throw new ProtocolError(
      `Cannot decode state section '${id}': payload length ${len} does not fit the message`,
    );
  }
  return { id, version, payload: b.slice(2 + idLen + 8) };
}

/** Encodes the run table of a RAM message: u32 count, u32 reserved, then 16 bytes per run. */
export function encodeRunTable(runs: readonly RamRun[]): Uint8Array {
  if (runs.length === 0 || runs.length > MAX_RUNS_PER_MESSAGE) {
    throw new RangeError(`Cannot encode ${runs.length} runs: need 1..${MAX_RUNS_PER_MESSAGE}`);
  }
  const out = new Uint8Array(RAM_PREFIX_BYTES + runs.length * RUN_BYTES);
  const v = new DataView(out.buffer);
  v.setUint32(0, runs.length, true);
  let o = RAM_PREFIX_BYTES;
  for (const r of runs) {
    v.setBigUint64(o, BigInt(r.gpa), true);
    v.setUint32(o + 8, r.pageCount, true);
    v.setUint32(o + 12, r.zero ? RUN_ZERO : 0, true);
    o += RUN_BYTES;
  }
  return out;
}

/** Decodes the RAM prefix; returns the run count after checking it against `messageLength`. */
export function decodeRunCount(prefix: Uint8Array, messageLength: number): number {
  const v = new DataView(prefix.buffer, prefix.byteOffset, prefix.byteLength);
  const count = v.getUint32(0, true);
  const reserved = v.getUint32(4, true);
  if (reserved !== 0) {
    throw new ProtocolError(`Cannot decode RAM message: reserved field is ${reserved}, want 0`);
  }
  if (count === 0 || count > MAX_RUNS_PER_MESSAGE) {
    throw new ProtocolError(
      `Cannot decode RAM message: run count ${count} is outside 1..${MAX_RUNS_PER_MESSAGE}`,
    );
  }
  if (RAM_PREFIX_BYTES + count * RUN_BYTES > messageLength) {
    throw new ProtocolError(`Cannot decode RAM message: ${count} runs do not fit in ${messageLength} bytes`);
  }
  return count;
}

/**
 * Decodes run entries (structure only; the caller checks them against its RAM).
 * @throws {ProtocolError} for unaligned or unsafe addresses, empty runs, unknown flags
 */
export function decodeRuns(table: Uint8Array): RamRun[] {
  const v = new DataView(table.buffer, table.byteOffset, table.byteLength);
  const runs: RamRun[] = [];
  for (let o = 0; o + RUN_BYTES <= table.length; o += RUN_BYTES) {
    const gpa = v.getBigUint64(o, true);
    const pageCount = v.getUint32(o + 8, true);
    const flags = v.getUint32(o + 12, true);
    const i = o / RUN_BYTES;
    if (gpa > BigInt(Number.MAX_SAFE_INTEGER) || gpa % BigInt(WIRE_PAGE_SIZE) !== 0n) {
      throw new ProtocolError(`Cannot decode RAM run ${i}: gpa 0x${gpa.toString(16)} is not a page address`);
    }
    if (pageCount === 0) throw new ProtocolError(`Cannot decode RAM run ${i}: page count is 0`);
    if ((flags & ~RUN_ZERO) !== 0) {
      throw new ProtocolError(`Cannot decode RAM run ${i}: unknown flags 0x${flags.toString(16)}`);
    }
    runs.push({ gpa: Number(gpa), pageCount, zero: flags === RUN_ZERO });
  }
  return runs;
}

/** What the reader reads from. */
