/**
 * The migration wire format: framing, message kinds, payload encoders/decoders, and a bounded
 * buffered reader. Everything is explicit little-endian. Table and diagram: docs/migration.md.
 *
 * Every message is a 24-byte header followed by `length` payload bytes:
 *
 * | offset | size | field                                   |
 * |-------:|-----:|-----------------------------------------|
 * | 0      | 8    | magic `"FERRYMIG"`                      |
 * | 8      | 2    | protocol version (u16)                  |
 * | 10     | 2    | kind (u16, {@linkcode MessageKind})     |
 * | 12     | 4    | flags (u32, must be 0)                  |
 * | 16     | 8    | payload length (u64, ≤ 64 MiB)          |
 *
 * The reader treats its input as hostile: each length is checked against a bound before anything
 * is allocated, and EOF inside a message is an error naming what was being read.
 * @module
 */

/** Wire protocol version this ferry writes. */
export const PROTOCOL_VERSION = 1;
/** Oldest wire protocol version this ferry reads. */
export const MIN_PROTOCOL_VERSION = 1;
/** `"FERRYMIG"`. */
export const MAGIC: Uint8Array = new TextEncoder().encode("FERRYMIG");
/** Bytes in every message header. */
export const HEADER_BYTES = 24;
/** Largest payload of any message. */
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
/** Largest section payload. */
export const MAX_SECTION_BYTES = 16 * 1024 * 1024;
/** Longest section id in UTF-8 bytes. */
export const MAX_SECTION_ID_BYTES = 256;
/** Most sections in one migration. */
export const MAX_SECTIONS = 4096;
/** Largest config message (JSON). */
export const MAX_CONFIG_BYTES = 1024 * 1024;
/** Longest nack/cancel reason and hello product string. */
export const MAX_REASON_BYTES = 4096;
/** Most runs in one RAM message. */
export const MAX_RUNS_PER_MESSAGE = 8192;
/** Page size on the wire. */
export const WIRE_PAGE_SIZE = 4096;
/** Bytes of the RAM message prefix: u32 run count + u32 reserved. */
export const RAM_PREFIX_BYTES = 8;
/** Bytes per run in a RAM message: u64 gpa, u32 page count, u32 flags. */
export const RUN_BYTES = 16;
/** Run flag: the pages are all zero; no bytes follow for this run. */
export const RUN_ZERO = 1;

/** Message kinds (u16 on the wire). */
export const MessageKind = {
  /** S→D first message: page size, product version. */
  hello: 1,
  /** S→D: JSON `{config, host}` attributes. */
  config: 2,
  /** D→S: configuration accepted. */
  ack: 3,
  /** D→S: refused or failed; payload is the reason (UTF-8). */
  nack: 4,
  /** S→D: a batch of page runs. */
  ram: 5,
  /** S→D: one state section. */
  state: 6,
  /** S→D: all sent; payload is the section count (u32). */
  complete: 7,
  /** Either way: the sender gives up; payload is the reason (UTF-8). */
  cancel: 8,
  /** D→S: the guest runs on the destination. */
  resumed: 9,
  /** S→D, after the last `state`: the switch-over digest of RAM and state (digest.ts). */
  digest: 10,
  /** S→D, first on a multifd channel (and on the main one): migration id and channel index (multifd.ts). */
  channel: 11,
  /** S→D on every multifd channel and then the main one: the end of a pass (u32 sync count). */
  sync: 12,
} as const;
/** A message kind name. */
export type MessageKindName = keyof typeof MessageKind;
const KIND_NAMES = new Map<number, MessageKindName>(
  Object.entries(MessageKind).map(([k, v]) => [v, k as MessageKindName]),
);

/** Thrown for malformed, hostile or truncated input from the peer. */
export class ProtocolError extends Error {
  override name = "ProtocolError";
}

/** A decoded header. */
export interface MessageHeader {
  version: number;
  kind: MessageKindName;
  flags: number;
  /** Payload bytes that follow (already checked ≤ {@linkcode MAX_MESSAGE_BYTES}). */
  length: number;
}

/** One run of pages in a RAM message. */
export interface RamRun {
  gpa: number;
  pageCount: number;
  /** True for a zero run (no bytes follow). */
  zero: boolean;
}

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

/**
 * Encodes a message header.
 * @param kind message kind
 * @param length payload bytes
 */
export function encodeHeader(kind: MessageKindName, length: number, version = PROTOCOL_VERSION): Uint8Array {
  if (!Number.isSafeInteger(length) || length < 0 || length > MAX_MESSAGE_BYTES) {
    throw new RangeError(
      `Cannot encode a '${kind}' message of ${length} bytes: limit is ${MAX_MESSAGE_BYTES}`,
    );
  }
  const b = new Uint8Array(HEADER_BYTES);
  b.set(MAGIC, 0);
  const v = new DataView(b.buffer);
  v.setUint16(8, version, true);
  v.setUint16(10, MessageKind[kind], true);
  v.setUint32(12, 0, true);
  v.setBigUint64(16, BigInt(length), true);
  return b;
}

/**
 * Decodes and validates a header: magic, version range, known kind, zero flags, bounded length.
 * @throws {ProtocolError} naming the bad field
 */
export function decodeHeader(b: Uint8Array): MessageHeader {
  if (b.length !== HEADER_BYTES) throw new ProtocolError(`Cannot decode header: ${b.length} bytes, need 24`);
  for (let i = 0; i < MAGIC.length; i++) {
    if (b[i] !== MAGIC[i]) {
      throw new ProtocolError(
        `Cannot read migration stream: bad magic ${hex(b.subarray(0, 8))}, want "FERRYMIG"`,
      );
    }
  }
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const version = v.getUint16(8, true);
  if (version > PROTOCOL_VERSION || version < MIN_PROTOCOL_VERSION) {
    throw new ProtocolError(
      `Cannot accept migration protocol version ${version}: this ferry reads versions ${MIN_PROTOCOL_VERSION} to ${PROTOCOL_VERSION}`,
    );
  }
  const code = v.getUint16(10, true);
  const kind = KIND_NAMES.get(code);
  if (!kind) throw new ProtocolError(`Cannot read migration stream: unknown message kind ${code}`);
  const flags = v.getUint32(12, true);
  if (flags !== 0) {
    throw new ProtocolError(`Cannot read '${kind}' message: unknown flags 0x${flags.toString(16)}`);
  }
  const length = v.getBigUint64(16, true);
  if (length > BigInt(MAX_MESSAGE_BYTES)) {
    throw new ProtocolError(
      `Cannot read '${kind}' message of ${length} bytes: limit is ${MAX_MESSAGE_BYTES}`,
    );
  }
  return { version, kind, flags, length: Number(length) };
}

function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

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
export interface ByteSource {
  read(p: Uint8Array): Promise<number | null>;
}

/** What the writer writes to. */
export interface ByteSink {
  write(p: Uint8Array): Promise<number>;
}

/** Writes all of `bytes` (a `write` may be partial). Zero-copy for guest RAM views. */
export async function writeAll(sink: ByteSink, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await sink.write(off === 0 ? bytes : bytes.subarray(off));
}

/**
 * A buffered reader of messages. It never allocates more than a payload it has bounds-checked,
 * reads large payloads straight into the caller's buffer (guest RAM), and throws
 * {@linkcode ProtocolError} on EOF inside a message.
 */
export class MessageReader {
  #src: ByteSource;
  #buf = new Uint8Array(64 * 1024);
  #start = 0;
  #end = 0;
  #version: number | undefined;
  #peer: string;

  /**
   * @param src the connection
   * @param peer who is on the other end, for messages ("source", "destination")
   */
  constructor(src: ByteSource, peer: string) {
    this.#src = src;
    this.#peer = peer;
  }

  /** The protocol version of the first header read. */
  get version(): number | undefined {
    return this.#version;
  }

  /** Fills `dst` exactly; `what` names it when the stream ends early. */
  async readExact(dst: Uint8Array, what: string): Promise<void> {
    let off = 0;
    while (off < dst.length) {
      if (this.#start < this.#end) {
        const n = Math.min(this.#end - this.#start, dst.length - off);
        dst.set(this.#buf.subarray(this.#start, this.#start + n), off);
        this.#start += n;
        off += n;
        continue;
      }
      const want = dst.length - off;
      let n: number | null;
      if (want >= this.#buf.length) {
        n = await this.#src.read(dst.subarray(off));
        if (n !== null) off += n;
      } else {
        n = await this.#src.read(this.#buf);
        if (n !== null) {
          this.#start = 0;
          this.#end = n;
        }
      }
      if (n === null) {
        throw new ProtocolError(
          `Cannot read ${what}: the ${this.#peer} closed the connection after ${off} of ${dst.length} bytes`,
        );
      }
    }
  }

  /**
   * Reads the next header; `null` on a clean EOF between messages.
   * @throws {ProtocolError} on a bad header, a version change mid-stream, or EOF inside the header
   */
  async readHeader(): Promise<MessageHeader | null> {
    if (this.#start === this.#end) {
      const n = await this.#src.read(this.#buf);
      if (n === null) return null;
      this.#start = 0;
      this.#end = n;
    }
    const b = new Uint8Array(HEADER_BYTES);
    await this.readExact(b, "message header");
    const h = decodeHeader(b);
    if (this.#version === undefined) this.#version = h.version;
    else if (h.version !== this.#version) {
      throw new ProtocolError(`Cannot read '${h.kind}' message: version ${h.version} after ${this.#version}`);
    }
    return h;
  }

  /** Reads a payload of `h.length` bytes after checking it is ≤ `max`. */
  async readPayload(h: MessageHeader, max: number): Promise<Uint8Array> {
    if (h.length > max) {
      throw new ProtocolError(`Cannot read '${h.kind}' message of ${h.length} bytes: limit is ${max}`);
    }
    const b = new Uint8Array(h.length);
    await this.readExact(b, `'${h.kind}' payload`);
    return b;
  }
}

/** Writes messages; serialises concurrent senders so frames never interleave. */
export class MessageWriter {
  #sink: ByteSink;
  #tail: Promise<void> = Promise.resolve();
  #busy = 0;

  constructor(sink: ByteSink) {
    this.#sink = sink;
  }

  /** True while a message is being written. */
  get busy(): boolean {
    return this.#busy > 0;
  }

  /**
   * Sends one message. `parts` are written in order without copying (e.g. guest RAM views).
   * @param kind message kind
   * @param parts payload pieces; their total length is the payload length
   */
  send(kind: MessageKindName, ...parts: Uint8Array[]): Promise<void> {
    const run = async () => {
      this.#busy++;
      try {
        let length = 0;
        for (const p of parts) length += p.length;
        const header = encodeHeader(kind, length);
        const first = parts[0];
        if (first !== undefined && first.length <= 256 * 1024) {
          // Header and first (small) part in one write: one syscall for control messages.
          const b = new Uint8Array(HEADER_BYTES + first.length);
          b.set(header);
          b.set(first, HEADER_BYTES);
          await writeAll(this.#sink, b);
          for (let i = 1; i < parts.length; i++) await writeAll(this.#sink, parts[i]!);
        } else {
          await writeAll(this.#sink, header);
          for (const p of parts) await writeAll(this.#sink, p);
        }
      } finally {
        this.#busy--;
      }
    };
    const p = this.#tail.then(run);
    this.#tail = p.catch(() => {});
    return p;
  }
}
