/**
 * The migration wire format's framing: headers with sequence numbers and CRC32C, and a bounded
 * buffered reader and writer (constants and kinds in `wire.ts`, payload codecs in `messages.ts`,
 * both re-exported here). Everything is explicit little-endian. Table and diagram: docs/migration.md.
 *
 * Every message (protocol version 2) is a 32-byte header followed by `length` payload bytes:
 *
 * | offset | size | field                                                        |
 * |-------:|-----:|--------------------------------------------------------------|
 * | 0      | 8    | magic `"FERRYMIG"`                                           |
 * | 8      | 2    | protocol version (u16, 2)                                    |
 * | 10     | 2    | kind (u16, {@linkcode MessageKind})                          |
 * | 12     | 4    | flags (u32, must be 0)                                       |
 * | 16     | 8    | payload length (u64, bounded per kind: {@linkcode PAYLOAD_BYTES}) |
 * | 24     | 4    | sequence number (u32: 0, 1, 2… per connection and direction) |
 * | 28     | 4    | CRC32C of the header (this field as 0) and the payload       |
 *
 * The reader treats its input as hostile: each length is checked against a bound before anything
 * is allocated, EOF inside a message is an error naming what was being read, and a message that
 * is missing, repeated, out of order or damaged is refused by its sequence number and CRC32C with
 * one line naming the message and its stream offset. The CRC is accumulated as the payload
 * arrives (RAM straight in guest memory); the writer computes it while copying the payload into
 * one reused send buffer, so the checksum is of exactly the bytes sent, even of guest RAM that
 * running vCPUs change meanwhile.
 * @module
 */
import { shim } from "../ffi/shim.ts";
import type { ReferenceSink } from "./splice.ts";
import {
  HEADER_BYTES,
  HEADER_CRC_OFFSET,
  HEADER_LENGTH_OFFSET,
  HEADER_SEQ_OFFSET,
  KIND_NAMES,
  MAGIC,
  MAX_MESSAGE_BYTES,
  type MessageHeader,
  MessageKind,
  type MessageKindName,
  MIN_PROTOCOL_VERSION,
  PAYLOAD_BYTES,
  PROTOCOL_VERSION,
  ProtocolError,
  WIRE_PAGE_SIZE,
} from "./wire.ts";

export * from "./wire.ts";
export * from "./messages.ts";

/** An empty write: moves only what a {@linkcode ReferenceSink} still has queued. */
const NOTHING = new Uint8Array(0);

/**
 * CRC32C of `bytes`, continuing `crc` (0 to start), by the shim's `crc32` instruction path.
 * @example
 * ```ts
 * crc32c(new TextEncoder().encode("123456789")); // 0xe3069283
 * ```
 */
export function crc32c(bytes: Uint8Array, crc = 0): number {
  if (bytes.length === 0) return crc >>> 0;
  return shim().ferry_crc32c(bytes as Uint8Array<ArrayBuffer>, BigInt(bytes.length), crc >>> 0) >>> 0;
}

/** CRC32C of a header with its CRC field taken as 0: where a message's CRC starts. */
function headerCrc(header: Uint8Array): number {
  const v = new DataView(header.buffer, header.byteOffset, HEADER_BYTES);
  const sent = v.getUint32(HEADER_CRC_OFFSET, true);
  v.setUint32(HEADER_CRC_OFFSET, 0, true);
  const c = crc32c(header.subarray(0, HEADER_BYTES));
  v.setUint32(HEADER_CRC_OFFSET, sent, true);
  return c;
}

/**
 * Encodes a message header; its CRC field is 0 until {@linkcode sealMessage} (or the writer) sets it.
 * @param kind message kind
 * @param length payload bytes
 * @param seq sequence number (the message's index on its connection)
 */
export function encodeHeader(
  kind: MessageKindName,
  length: number,
  seq = 0,
  version = PROTOCOL_VERSION,
): Uint8Array {
  if (!Number.isSafeInteger(length) || length < 0 || length > PAYLOAD_BYTES[kind][1]) {
    throw new RangeError(
      `Cannot encode a '${kind}' message of ${length} bytes: limit is ${PAYLOAD_BYTES[kind][1]}`,
    );
  }
  const b = new Uint8Array(HEADER_BYTES);
  writeHeader(b, kind, length, seq, version);
  return b;
}

function writeHeader(
  b: Uint8Array,
  kind: MessageKindName,
  length: number,
  seq: number,
  version: number,
): void {
  b.set(MAGIC, 0);
  const v = new DataView(b.buffer, b.byteOffset, HEADER_BYTES);
  v.setUint16(8, version, true);
  v.setUint16(10, MessageKind[kind], true);
  v.setUint32(12, 0, true);
  v.setBigUint64(HEADER_LENGTH_OFFSET, BigInt(length), true);
  v.setUint32(HEADER_SEQ_OFFSET, seq >>> 0, true);
  v.setUint32(HEADER_CRC_OFFSET, 0, true);
}

/**
 * A whole message, header and payload, with its sequence number and CRC32C: for hand-built
 * streams (tests, a `nack` written before a reader exists).
 */
export function encodeMessage(kind: MessageKindName, payload: Uint8Array, seq = 0): Uint8Array {
  const m = new Uint8Array(HEADER_BYTES + payload.length);
  m.set(encodeHeader(kind, payload.length, seq));
  m.set(payload, HEADER_BYTES);
  return sealMessage(m);
}

/**
 * Sets the CRC32C field of a whole message (header and payload) in place from its bytes, and
 * returns it: what a sender that changed a message must do for a receiver to accept it.
 */
export function sealMessage(message: Uint8Array): Uint8Array {
  const v = new DataView(message.buffer, message.byteOffset, HEADER_BYTES);
  const c = crc32c(message.subarray(HEADER_BYTES), headerCrc(message));
  v.setUint32(HEADER_CRC_OFFSET, c, true);
  return message;
}

/**
 * Decodes and validates a header: magic, version range, known kind, zero flags, length within
 * the kind's bounds ({@linkcode PAYLOAD_BYTES}). Sequence number and CRC are the reader's to check.
 * @throws {ProtocolError} naming the bad field
 */
export function decodeHeader(b: Uint8Array): MessageHeader {
  if (b.length !== HEADER_BYTES) {
    throw new ProtocolError(`Cannot decode header: ${b.length} bytes, need ${HEADER_BYTES}`);
  }
  for (let i = 0; i < MAGIC.length; i++) {
    if (b[i] !== MAGIC[i]) {
      throw new ProtocolError(
        `Cannot read migration stream: bad magic ${hex(b.subarray(0, 8))}, want "FERRYMIG"`,
      );
    }
  }
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const version = v.getUint16(8, true);
  checkVersion(version);
  const code = v.getUint16(10, true);
  const kind = KIND_NAMES.get(code);
  if (!kind) throw new ProtocolError(`Cannot read migration stream: unknown message kind ${code}`);
  const flags = v.getUint32(12, true);
  if (flags !== 0) {
    throw new ProtocolError(`Cannot read '${kind}' message: unknown flags 0x${flags.toString(16)}`);
  }
  const length = v.getBigUint64(HEADER_LENGTH_OFFSET, true);
  const [min, max] = PAYLOAD_BYTES[kind];
  if (length > BigInt(max) || length < BigInt(min)) {
    throw new ProtocolError(
      `Cannot read '${kind}' message of ${length} bytes: ${
        length > BigInt(max) ? `limit is ${max}` : `need at least ${min}`
      }`,
    );
  }
  return {
    version,
    kind,
    flags,
    length: Number(length),
    seq: v.getUint32(HEADER_SEQ_OFFSET, true),
    crc: v.getUint32(HEADER_CRC_OFFSET, true),
  };
}

function checkVersion(version: number): void {
  if (version > PROTOCOL_VERSION || version < MIN_PROTOCOL_VERSION) {
    const why = version < MIN_PROTOCOL_VERSION
      ? "the peer runs an older ferry whose stream has no sequence numbers nor CRC32C"
      : "the peer runs a newer ferry";
    throw new ProtocolError(
      `Cannot accept migration protocol version ${version}: this ferry speaks version ${PROTOCOL_VERSION} only (${why}); run the same ferry release on both sides`,
    );
  }
}

function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

export interface ByteSource {
  read(p: Uint8Array): Promise<number | null>;
}

/** What the writer writes to. */
export interface ByteSink {
  write(p: Uint8Array): Promise<number>;
  /** Writes pages by reference (splice.ts), when the connection can: a plaintext unix source. */
  readonly byReference?: ReferenceSink | undefined;
}

/** Writes all of `bytes` (a `write` may be partial). Zero-copy for guest RAM views. */
export async function writeAll(sink: ByteSink, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await sink.write(off === 0 ? bytes : bytes.subarray(off));
}

/** The message a {@linkcode MessageReader} is in: where it started and its CRC so far. */
interface OpenMessage {
  kind: MessageKindName;
  seq: number;
  /** Stream offset of its header. */
  at: number;
  /** Payload bytes not read yet. */
  remaining: number;
  /** CRC32C so far (header with CRC field 0, then the payload read). */
  crc: number;
  /** CRC32C from the header. */
  want: number;
}

/**
 * A buffered reader of messages. It never allocates more than a payload it has bounds-checked,
 * reads large payloads straight into the caller's buffer (guest RAM), checks every message's
 * sequence number and CRC32C (accumulated as the payload lands, no extra copy), and throws
 * {@linkcode ProtocolError} on EOF inside a message.
 */
export class MessageReader {
  #src: ByteSource;
  #buf = new Uint8Array(64 * 1024);
  #start = 0;
  #end = 0;
  #version: number | undefined;
  #peer: string;
  /** Stream bytes consumed. */
  #offset = 0;
  /** The sequence number the next message must carry. */
  #seq = 0;
  #open: OpenMessage | undefined;
  #last: OpenMessage | undefined;
  #crc = shim().ferry_crc32c;
  #crcPages = shim().ferry_crc32c_pages;
  /** {@linkcode readPagesStaged}'s buffers, allocated on first use. */
  #stages: Uint8Array[] = [];

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

  /** Stream bytes read so far (headers and payloads). */
  get offset(): number {
    return this.#offset;
  }

  /** Bytes received and not read yet. */
  get buffered(): number {
    return this.#end - this.#start;
  }

  /** The last message whose header was read, e.g. `message #3 ('ram') at stream offset 119396`. */
  get lastMessage(): string | undefined {
    const m = this.#last;
    return m && `message #${m.seq} ('${m.kind}') at stream offset ${m.at}`;
  }

  /**
   * Fills `dst` exactly with payload bytes of the current message, adding them to its CRC32C;
   * the CRC is checked when the last payload byte is read. `what` names `dst` when the stream
   * ends early.
   * @throws {ProtocolError} reading past the message, on EOF, or on a CRC mismatch
   */
  async readExact(dst: Uint8Array, what: string): Promise<void> {
    const m = this.#open;
    if (!m || dst.length > m.remaining) {
      throw new ProtocolError(
        m
          ? `Cannot read ${what}: ${dst.length} bytes past the end of the '${m.kind}' message (${m.remaining} left)`
          : `Cannot read ${what}: no message is open`,
      );
    }
    await this.#fill(dst, what, m);
    m.remaining -= dst.length;
    if (m.remaining === 0) this.#close(m);
  }

  /**
   * {@linkcode readExact} for whole 4 KiB pages (a raw RAM run, straight into guest memory): as
   * each read lands, the pages it completed get their CRC32C into `pageCrcs` (for the switch-over
   * digest), added to the message's CRC32C while they are still in cache.
   */
  async readPages(dst: Uint8Array, what: string, pageCrcs: Uint32Array): Promise<void> {
    const m = this.#open;
    const pages = dst.length / WIRE_PAGE_SIZE;
    if (!m || dst.length > m.remaining || !Number.isInteger(pages) || pageCrcs.length < pages) {
      throw new ProtocolError(
        m
          ? `Cannot read ${what}: ${dst.length} bytes of pages do not fit the '${m.kind}' message (${m.remaining} left)`
          : `Cannot read ${what}: no message is open`,
      );
    }
    let done = 0;
    await this.#fill(dst, what, undefined, (landed) => {
      const upto = Math.floor(landed / WIRE_PAGE_SIZE);
      if (upto === done) return;
      m.crc = this.#crcPages(
        dst.subarray(done * WIRE_PAGE_SIZE) as Uint8Array<ArrayBuffer>,
        BigInt(upto - done),
        pageCrcs.subarray(done),
        m.crc,
      );
      done = upto;
    });
    m.remaining -= dst.length;
    if (m.remaining === 0) this.#close(m);
  }

  /**
   * {@linkcode readPages} through staging buffers, for pages that cannot be read straight into
   * guest RAM (fresh pages landed by userfaultfd): the next `len` payload bytes (whole pages) are
   * read chunk by chunk into small reused buffers, checksummed there while in cache (each page's
   * CRC32C into `pageCrcs`, all of them into the message's), and each chunk goes to `place` with
   * its byte offset. The next chunk is read while earlier ones are placed, at most
   * {@linkcode STAGES} at once; resolves once every chunk is placed.
   * @throws {ProtocolError} as {@linkcode readPages}; the first error of `place`
   */
  async readPagesStaged(
    len: number,
    what: string,
    pageCrcs: Uint32Array,
    place: (offset: number, chunk: Uint8Array) => Promise<void>,
  ): Promise<void> {
    const m = this.#open;
    const pages = len / WIRE_PAGE_SIZE;
    if (!m || len > m.remaining || !Number.isInteger(pages) || pageCrcs.length < pages) {
      throw new ProtocolError(
        m
          ? `Cannot read ${what}: ${len} bytes of pages do not fit the '${m.kind}' message (${m.remaining} left)`
          : `Cannot read ${what}: no message is open`,
      );
    }
    const pending: Promise<void>[] = [];
    let failed: { error: unknown } | undefined;
    let off = 0;
    try {
      for (let k = 0; off < len; k++) {
        const i = k % STAGES;
        await pending[i];
        if (failed) throw failed.error;
        this.#stages[i] ??= pageAlignedBuffer(STAGE_BYTES);
        const chunk = this.#stages[i]!.subarray(0, Math.min(STAGE_BYTES, len - off));
        await this.#fill(chunk, what, undefined);
        const page = off / WIRE_PAGE_SIZE;
        m.crc = this.#crcPages(
          chunk as Uint8Array<ArrayBuffer>,
          BigInt(chunk.length / WIRE_PAGE_SIZE),
          pageCrcs.subarray(page),
          m.crc,
        );
        pending[i] = place(off, chunk).catch((e) => void (failed ??= { error: e }));
        off += chunk.length;
        m.remaining -= chunk.length;
      }
    } finally {
      await Promise.all(pending);
    }
    if (failed) throw failed.error;
    if (m.remaining === 0) this.#close(m);
  }

  /** Checks the finished message's CRC32C. */
  #close(m: OpenMessage): void {
    this.#open = undefined;
    const got = m.crc >>> 0;
    if (got !== m.want) {
      throw new ProtocolError(
        `${this.#name(m.seq, m.kind, m.at)}: CRC32C mismatch (0x${hex32(m.want)} on the wire, 0x${
          hex32(got)
        } computed): the message was damaged`,
      );
    }
  }

  #name(seq: number, kind: string, at: number): string {
    return `Cannot accept migration message #${seq} ('${kind}') at stream offset ${at}`;
  }

  /**
   * Fills `dst` from the connection; adds the bytes to `m`'s CRC when given, and tells `landed`
   * how many bytes of `dst` are filled after each read.
   */
  async #fill(
    dst: Uint8Array,
    what: string,
    m: OpenMessage | undefined,
    landed?: (filled: number) => void,
  ): Promise<void> {
    let off = 0;
    const crc = this.#crc;
    while (off < dst.length) {
      if (this.#start < this.#end) {
        const n = Math.min(this.#end - this.#start, dst.length - off);
        dst.set(this.#buf.subarray(this.#start, this.#start + n), off);
        if (m) m.crc = crc(this.#buf.subarray(this.#start, this.#start + n), BigInt(n), m.crc);
        this.#start += n;
        this.#offset += n;
        off += n;
        landed?.(off);
        continue;
      }
      const want = dst.length - off;
      let n: number | null;
      if (want >= this.#buf.length) {
        // Straight into the caller's buffer (guest RAM); the CRC reads it while it is in cache.
        const into = dst.subarray(off);
        n = await this.#src.read(into);
        if (n !== null) {
          if (m && n > 0) m.crc = crc(into as Uint8Array<ArrayBuffer>, BigInt(n), m.crc);
          off += n;
          this.#offset += n;
          landed?.(off);
        }
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
   * Reads the next header; `null` on a clean EOF between messages. Its sequence number must be
   * the next one on this connection.
   * @throws {ProtocolError} on a bad header, a version change mid-stream, a missing, repeated or
   *   reordered message, or EOF inside the header
   */
  async readHeader(): Promise<MessageHeader | null> {
    if (this.#open) {
      const m = this.#open;
      throw new ProtocolError(
        `${this.#name(m.seq, m.kind, m.at)}: its last ${m.remaining} payload bytes were not read`,
      );
    }
    if (this.#start === this.#end) {
      const n = await this.#src.read(this.#buf);
      if (n === null) return null;
      this.#start = 0;
      this.#end = n;
    }
    const at = this.#offset;
    const b = new Uint8Array(HEADER_BYTES);
    await this.#fill(b.subarray(0, 10), "message header", undefined);
    // The version first: a version 1 peer's header is shorter and must not be read as this one.
    if (b.subarray(0, 8).every((x, i) => x === MAGIC[i])) {
      checkVersion(new DataView(b.buffer).getUint16(8, true));
    }
    await this.#fill(b.subarray(10), "message header", undefined);
    let h: MessageHeader;
    try {
      h = decodeHeader(b);
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      throw new ProtocolError(`${e.message} (message #${this.#seq} at stream offset ${at})`);
    }
    if (h.seq !== this.#seq) {
      const why = h.seq > this.#seq
        ? `message #${this.#seq} is missing or out of order`
        : `message #${h.seq} was already received: repeated or out of order`;
      throw new ProtocolError(
        `${this.#name(this.#seq, h.kind, at)}: sequence number ${h.seq}, want ${this.#seq}: ${why}`,
      );
    }
    this.#seq = (this.#seq + 1) >>> 0;
    if (this.#version === undefined) this.#version = h.version;
    else if (h.version !== this.#version) {
      throw new ProtocolError(`Cannot read '${h.kind}' message: version ${h.version} after ${this.#version}`);
    }
    const m: OpenMessage = {
      kind: h.kind,
      seq: h.seq,
      at,
      remaining: h.length,
      crc: headerCrc(b),
      want: h.crc,
    };
    this.#open = m;
    this.#last = m;
    if (h.length === 0) this.#close(m);
    return h;
  }

  /**
   * Reads the payload of `h` after checking its length is ≤ `max` (by default its kind's bound).
   * Its CRC32C is checked before it is returned.
   */
  async readPayload(h: MessageHeader, max: number = PAYLOAD_BYTES[h.kind][1]): Promise<Uint8Array> {
    if (h.length > max) {
      throw new ProtocolError(`Cannot read '${h.kind}' message of ${h.length} bytes: limit is ${max}`);
    }
    const b = new Uint8Array(h.length);
    if (h.length > 0) await this.readExact(b, `'${h.kind}' payload`);
    return b;
  }
}

/**
 * Bytes per staging buffer of {@linkcode MessageReader.readPagesStaged}. Each chunk costs a few
 * async operations (reads, a placement): 2 MiB took 0.35 s of destination CPU per 480 MiB, 512
 * KiB 0.40 s and 128 KiB 0.53 s; 4 MiB was no better (docs/migration-performance.md).
 */
const STAGE_BYTES = 2 * 1024 * 1024;
/**
 * Staging buffers: a chunk is placed while the next one is read. Two did better than three (535
 * and 590 ms against 588 and 671 ms in two batches) and than one (633 ms).
 */
const STAGES = 2;

function hex32(n: number): string {
  return (n >>> 0).toString(16).padStart(8, "0");
}

/** Smallest send buffer of a {@linkcode MessageWriter}; it grows to the largest message sent. */
const MIN_SEND_BUFFER = 64 * 1024;

/**
 * Writes messages; serialises concurrent senders so frames never interleave. Every message is
 * copied into one of two reused send buffers while its CRC32C is computed (`ferry_copy_crc32c`, one
 * pass), then written with one `writeAll`: the checksum covers exactly the bytes sent, even for
 * guest RAM that running vCPUs change meanwhile, and no buffer is allocated per message.
 *
 * Copies and writes are two ordered phases: a message is copied (and numbered) once its buffer's
 * previous write is done, and written after the message before it. So with
 * {@linkcode sendPagesQueued} the next RAM message is copied while the kernel still takes the last
 * one (the socket buffer is far smaller than a message), and the peer is not left idle meanwhile.
 */
export class MessageWriter {
  #sink: ByteSink;
  /** The copy phase of the last message (copies run in call order). */
  #copyTail: Promise<void> = Promise.resolve();
  /** The write of the last message (writes run in copy order). */
  #writeTail: Promise<void> = Promise.resolve();
  /** The first write error: every later send fails with it. */
  #error: unknown;
  #busy = 0;
  #seq = 0;
  #bufs = [new Uint8Array(MIN_SEND_BUFFER), new Uint8Array(MIN_SEND_BUFFER)];
  /** Per buffer: its last write (the buffer is free once that settled). */
  #bufFree: Promise<void>[] = [Promise.resolve(), Promise.resolve()];
  #next = 0;
  #copy = shim().ferry_copy_crc32c;
  #copyPages = shim().ferry_copy_crc32c_pages;
  #crcPages = shim().ferry_crc32c_pages;

  constructor(sink: ByteSink) {
    this.#sink = sink;
  }

  /** True while a message is being copied or written. */
  get busy(): boolean {
    return this.#busy > 0;
  }

  /** Messages sent (or being sent) so far: the next sequence number. */
  get sent(): number {
    return this.#seq;
  }

  /**
   * Sends one message with the next sequence number; resolves once it is written. `parts` (e.g.
   * guest RAM views) are copied into a send buffer in order, the CRC32C computed in the same pass.
   * @param kind message kind
   * @param parts payload pieces; their total length is the payload length
   */
  async send(kind: MessageKindName, ...parts: Uint8Array[]): Promise<void> {
    await (await this.#enqueue(kind, parts, undefined)).written;
  }

  /**
   * {@linkcode send} of `prefix` then `pages` (each a whole number of 4 KiB pages, e.g. guest RAM
   * views), writing the CRC32C of every page into `pageCrcs` from index 0: the checksums of
   * exactly the bytes sent, computed in the same copy pass (the switch-over digest takes them).
   */
  async sendPages(
    kind: MessageKindName,
    prefix: Uint8Array,
    pages: readonly Uint8Array[],
    pageCrcs: Uint32Array,
  ): Promise<void> {
    await (await this.#enqueue(kind, [prefix, ...pages], pageCrcs)).written;
  }

  /**
   * {@linkcode sendPages} that resolves once the message is copied (`pageCrcs` filled, the pages
   * free to change): its write goes on in the background, after the messages before it. A write
   * error fails the next send, and {@linkcode drain}.
   */
  async sendPagesQueued(
    kind: MessageKindName,
    prefix: Uint8Array,
    pages: readonly Uint8Array[],
    pageCrcs: Uint32Array,
  ): Promise<void> {
    await this.#enqueue(kind, [prefix, ...pages], pageCrcs);
  }

  /**
   * {@linkcode sendPagesQueued} without the copy, for pages nothing can change until they are
   * written (a paused guest: vCPUs and device I/O stopped, `cont` refused during a migration). Their
   * CRC32Cs are computed in place, and the pages are written straight from `pages` after the header
   * and `prefix`. Resolves once the checksums are known; the write goes on in the background. Like
   * the copied kind, it first waits while two messages are still unwritten: the pages are read
   * for their checksums just before the socket takes them, not all up front.
   */
  async sendPagesInPlaceQueued(
    kind: MessageKindName,
    prefix: Uint8Array,
    pages: readonly Uint8Array[],
    pageCrcs: Uint32Array,
  ): Promise<void> {
    await this.#enqueue(kind, [prefix, ...pages], pageCrcs, true);
  }

  /** Waits until every message sent so far is written; throws the first write error. */
  async drain(): Promise<void> {
    await this.#copyTail;
    await this.#writeTail;
    if (this.#error !== undefined) throw this.#error;
  }

  /**
   * Frames the message (a copy, or checksums in place) once a slot is free; resolves (a wrapper,
   * not flattened) to its write.
   */
  #enqueue(
    kind: MessageKindName,
    parts: readonly Uint8Array[],
    pageCrcs: Uint32Array | undefined,
    inPlace = false,
  ): Promise<{ written: Promise<void> }> {
    this.#busy++;
    const copied = this.#copyTail.then(async () => {
      if (this.#error !== undefined) throw this.#error;
      // At most two messages wait for the socket, in place or copied: the next one is framed while
      // the last is written, and its pages are checksummed just before they go out (still in cache).
      const i = this.#next;
      this.#next ^= 1;
      await this.#bufFree[i];
      if (this.#error !== undefined) throw this.#error;
      // In place: the header and run table, then the pages straight from guest RAM; else one copy.
      const out = inPlace
        ? this.#frameInPlace(kind, parts, pageCrcs!)
        : [this.#fill(i, kind, parts, pageCrcs)];
      // Pages in place go by reference when the connection can (the kernel reads them from guest
      // RAM as the peer reads), and all of them are in the socket before the next write.
      const ref = inPlace ? this.#sink.byReference : undefined;
      const written = this.#writeTail.then(async () => {
        for (let k = 0; k < out.length; k++) {
          if (this.#error !== undefined) throw this.#error;
          await writeAll(ref && k > 0 ? ref : this.#sink, out[k]!);
        }
        while (ref && ref.queued > 0) await ref.write(NOTHING);
      }).catch((e) => {
        this.#error ??= e;
        throw e;
      });
      this.#writeTail = this.#bufFree[i] = written.catch(() => {});
      return { written };
    });
    this.#copyTail = copied.then(() => {}, () => {});
    const done = () => void this.#busy--;
    copied.then(({ written }) => written.then(done, done), done);
    return copied;
  }

  /**
   * The payload length of `parts`, checked against the kind's bound, and with `pageCrcs`, that
   * every part after the first is whole pages with room for their CRCs. Called before the
   * sequence number is taken: a refused message leaves no gap.
   * @throws {RangeError} naming the message kind (and the part)
   */
  #checkedLength(
    kind: MessageKindName,
    parts: readonly Uint8Array[],
    pageCrcs: Uint32Array | undefined,
  ): number {
    let length = 0;
    for (const p of parts) length += p.length;
    const [, max] = PAYLOAD_BYTES[kind];
    if (length > max) {
      throw new RangeError(`Cannot encode a '${kind}' message of ${length} bytes: limit is ${max}`);
    }
    let page = 0;
    for (let j = 1; pageCrcs && j < parts.length; j++) {
      const n = parts[j]!.length / WIRE_PAGE_SIZE;
      if (!Number.isInteger(n) || page + n > pageCrcs.length) {
        throw new RangeError(
          `Cannot send part ${j} of a '${kind}' message as pages: ${parts[j]!.length} bytes`,
        );
      }
      page += n;
    }
    return length;
  }

  /** Takes the next sequence number. */
  #nextSeq(): number {
    const seq = this.#seq;
    this.#seq = (seq + 1) >>> 0;
    return seq;
  }

  /**
   * Numbers the message and checksums it without copying the pages: returns the buffers to write,
   * a new one holding the header and `parts[0]` (the run table), then the page views themselves.
   */
  #frameInPlace(kind: MessageKindName, parts: readonly Uint8Array[], pageCrcs: Uint32Array): Uint8Array[] {
    const length = this.#checkedLength(kind, parts, pageCrcs);
    const first = parts[0] ?? new Uint8Array(0);
    const head = new Uint8Array(HEADER_BYTES + first.length);
    writeHeader(head, kind, length, this.#nextSeq(), PROTOCOL_VERSION);
    head.set(first, HEADER_BYTES);
    let crc = crc32c(head.subarray(0, HEADER_BYTES));
    crc = crc32c(first, crc);
    const out = [head];
    let page = 0;
    for (let j = 1; j < parts.length; j++) {
      const p = parts[j]! as Uint8Array<ArrayBuffer>;
      if (p.length === 0) continue;
      const n = p.length / WIRE_PAGE_SIZE;
      crc = this.#crcPages(p, BigInt(n), pageCrcs.subarray(page), crc);
      page += n;
      out.push(p);
    }
    new DataView(head.buffer, 0, HEADER_BYTES).setUint32(HEADER_CRC_OFFSET, crc >>> 0, true);
    return out;
  }

  /** Numbers the message and copies it into buffer `i` with its CRC32C; returns the bytes to write. */
  #fill(
    i: number,
    kind: MessageKindName,
    parts: readonly Uint8Array[],
    pageCrcs: Uint32Array | undefined,
  ): Uint8Array {
    const length = this.#checkedLength(kind, parts, pageCrcs);
    const total = HEADER_BYTES + length;
    if (this.#bufs[i]!.length < total) {
      this.#bufs[i] = new Uint8Array(Math.max(total, Math.min(2 * this.#bufs[i]!.length, MAX_MESSAGE_BYTES)));
    }
    const b = this.#bufs[i]! as Uint8Array<ArrayBuffer>;
    writeHeader(b, kind, length, this.#nextSeq(), PROTOCOL_VERSION);
    let crc = crc32c(b.subarray(0, HEADER_BYTES));
    let o = HEADER_BYTES;
    let page = 0;
    for (let j = 0; j < parts.length; j++) {
      const p = parts[j]! as Uint8Array<ArrayBuffer>;
      if (p.length === 0) continue;
      if (pageCrcs && j > 0) {
        const n = p.length / WIRE_PAGE_SIZE;
        crc = this.#copyPages(b.subarray(o), p, BigInt(n), pageCrcs.subarray(page), crc);
        page += n;
      } else {
        crc = this.#copy(b.subarray(o), p, BigInt(p.length), crc);
      }
      o += p.length;
    }
    new DataView(b.buffer, 0, HEADER_BYTES).setUint32(HEADER_CRC_OFFSET, crc >>> 0, true);
    return b.subarray(0, total);
  }
}

/**
 * A zeroed buffer of `bytes` that starts on a page boundary. V8's large buffers start 16 bytes into
 * a page (malloc's header), and the kernel's copy of page-aligned source pages into such a buffer
 * (a `recv` of pages sent by reference) ran at about a third of its speed here
 * (docs/migration-performance.md, "Pages by reference").
 */
function pageAlignedBuffer(bytes: number): Uint8Array {
  const raw = new Uint8Array(bytes + WIRE_PAGE_SIZE);
  const addr = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(raw)));
  const off = (WIRE_PAGE_SIZE - Number(addr % BigInt(WIRE_PAGE_SIZE))) % WIRE_PAGE_SIZE;
  return raw.subarray(off, off + bytes);
}
