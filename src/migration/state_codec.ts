/**
 * Encodes {@linkcode StateValue} (plain device state) to bytes and back, keeping every type exact:
 * `5n` stays a bigint, `5` a number, `Uint8Array` stays bytes. A small tagged binary format (the
 * npm CBOR package does not install here: its native optional dependencies are missing from the
 * registry mirror, and CBOR would turn small bigints into numbers).
 *
 * | tag  | value      | body                                           |
 * |------|------------|------------------------------------------------|
 * | 0x00 | null       | —                                              |
 * | 0x01 | false      | —                                              |
 * | 0x02 | true       | —                                              |
 * | 0x03 | number     | f64 LE                                         |
 * | 0x04 | number     | i32 LE (integers in range, not -0)             |
 * | 0x05 | bigint     | u8 sign (0/1), u16 n, n magnitude bytes LE     |
 * | 0x06 | string     | u32 n, n bytes UTF-8                           |
 * | 0x07 | Uint8Array | u32 n, n bytes                                 |
 * | 0x08 | array      | u32 n, n values                                |
 * | 0x09 | object     | u32 n, n × (u32 key length, key UTF-8, value)  |
 *
 * The first byte is the codec version (1). Decoding treats input as untrusted: every count is
 * checked against the bytes left, nesting is limited, trailing bytes are an error.
 * @module
 */
import type { StateValue } from "../devices/device.ts";

/** Codec format version (first byte). */
export const STATE_CODEC_VERSION = 1;
/** Deepest nesting of arrays/objects. */
export const MAX_STATE_DEPTH = 64;
/** Largest bigint magnitude in bytes. */
const MAX_BIGINT_BYTES = 1024;

const TAG_NULL = 0, TAG_FALSE = 1, TAG_TRUE = 2, TAG_F64 = 3, TAG_I32 = 4, TAG_BIGINT = 5;
const TAG_STRING = 6, TAG_BYTES = 7, TAG_ARRAY = 8, TAG_OBJECT = 9;

const utf8 = new TextEncoder();
const utf8Fatal = new TextDecoder("utf-8", { fatal: true });

class Out {
  buf = new Uint8Array(256);
  view = new DataView(this.buf.buffer);
  len = 0;
  need(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const b = new Uint8Array(size);
    b.set(this.buf.subarray(0, this.len));
    this.buf = b;
    this.view = new DataView(b.buffer);
  }
  u8(x: number): void {
    this.need(1);
    this.buf[this.len++] = x;
  }
  u16(x: number): void {
    this.need(2);
    this.view.setUint16(this.len, x, true);
    this.len += 2;
  }
  u32(x: number): void {
    this.need(4);
    this.view.setUint32(this.len, x, true);
    this.len += 4;
  }
  bytes(b: Uint8Array): void {
    this.need(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
}

function isPlainObject(v: object): boolean {
  const p = Object.getPrototypeOf(v);
  return p === Object.prototype || p === null;
}

function enc(out: Out, v: StateValue, path: string, depth: number): void {
  if (depth > MAX_STATE_DEPTH) {
    throw new RangeError(`Cannot encode state at ${path}: nested deeper than ${MAX_STATE_DEPTH}`);
  }
  if (v === null) return out.u8(TAG_NULL);
  switch (typeof v) {
    case "boolean":
      return out.u8(v ? TAG_TRUE : TAG_FALSE);
    case "number":
      if (Number.isInteger(v) && v >= -0x80000000 && v <= 0x7fffffff && !Object.is(v, -0)) {
        out.u8(TAG_I32);
        out.need(4);
        out.view.setInt32(out.len, v, true);
        out.len += 4;
      } else {
        out.u8(TAG_F64);
        out.need(8);
        out.view.setFloat64(out.len, v, true);
        out.len += 8;
      }
      return;
    case "bigint": {
      const neg = v < 0n;
      let m = neg ? -v : v;
      const mag: number[] = [];
      while (m > 0n) {
        mag.push(Number(m & 0xffn));
        m >>= 8n;
      }
      if (mag.length > MAX_BIGINT_BYTES) {
        throw new RangeError(`Cannot encode state at ${path}: bigint too large`);
      }
      out.u8(TAG_BIGINT);
      out.u8(neg ? 1 : 0);
      out.u16(mag.length);
      out.bytes(Uint8Array.from(mag));
      return;
    }
    case "string": {
      const b = utf8.encode(v);
      out.u8(TAG_STRING);
      out.u32(b.length);
      out.bytes(b);
      return;
    }
    case "object":
      if (v instanceof Uint8Array) {
        out.u8(TAG_BYTES);
        out.u32(v.length);
        out.bytes(v);
        return;
      }
      if (Array.isArray(v)) {
        out.u8(TAG_ARRAY);
        out.u32(v.length);
        for (let i = 0; i < v.length; i++) enc(out, v[i] as StateValue, `${path}[${i}]`, depth + 1);
        return;
      }
      if (isPlainObject(v)) {
        const keys = Object.keys(v);
        out.u8(TAG_OBJECT);
        out.u32(keys.length);
        for (const k of keys) {
          const kb = utf8.encode(k);
          out.u32(kb.length);
          out.bytes(kb);
          enc(out, (v as Record<string, StateValue>)[k]!, `${path}.${k}`, depth + 1);
        }
        return;
      }
      throw new TypeError(
        `Cannot encode state at ${path}: ${v.constructor?.name ?? "object"} is not plain data`,
      );
    default:
      throw new TypeError(`Cannot encode state at ${path}: ${typeof v} is not plain data`);
  }
}

/**
 * Encodes plain state to bytes.
 * @throws {TypeError} naming the path of a value that is not plain data (undefined, a class, a function)
 * @example
 * ```ts
 * const bytes = encodeState({ ier: 1, msr: 0x4b564d10n, fifo: new Uint8Array([1, 2]) });
 * ```
 */
export function encodeState(value: StateValue): Uint8Array {
  const out = new Out();
  out.u8(STATE_CODEC_VERSION);
  enc(out, value, "$", 0);
  return out.buf.slice(0, out.len);
}

class In {
  pos = 0;
  readonly view: DataView;
  constructor(readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  fail(what: string): never {
    throw new SyntaxError(`Cannot decode state at byte ${this.pos}: ${what}`);
  }
  need(n: number, what: string): void {
    if (n > this.buf.length - this.pos) {
      this.fail(`${what} needs ${n} bytes, ${this.buf.length - this.pos} left`);
    }
  }
  u8(): number {
    this.need(1, "a tag");
    return this.buf[this.pos++]!;
  }
  u32(what: string): number {
    this.need(4, what);
    const x = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return x;
  }
  take(n: number, what: string): Uint8Array {
    this.need(n, what);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  text(n: number, what: string): string {
    const b = this.take(n, what);
    try {
      return utf8Fatal.decode(b);
    } catch {
      this.fail(`${what} is not valid UTF-8`);
    }
  }
}

function dec(i: In, depth: number): StateValue {
  if (depth > MAX_STATE_DEPTH) i.fail(`nested deeper than ${MAX_STATE_DEPTH}`);
  const tag = i.u8();
  switch (tag) {
    case TAG_NULL:
      return null;
    case TAG_FALSE:
      return false;
    case TAG_TRUE:
      return true;
    case TAG_F64: {
      i.need(8, "a float");
      const x = i.view.getFloat64(i.pos, true);
      i.pos += 8;
      return x;
    }
    case TAG_I32: {
      i.need(4, "an integer");
      const x = i.view.getInt32(i.pos, true);
      i.pos += 4;
      return x;
    }
    case TAG_BIGINT: {
      const sign = i.u8();
      if (sign > 1) i.fail(`bigint sign ${sign}`);
      i.need(2, "a bigint length");
      const n = i.view.getUint16(i.pos, true);
      i.pos += 2;
      if (n > MAX_BIGINT_BYTES) i.fail(`bigint of ${n} bytes`);
      const b = i.take(n, "a bigint");
      let m = 0n;
      for (let k = b.length - 1; k >= 0; k--) m = (m << 8n) | BigInt(b[k]!);
      return sign ? -m : m;
    }
    case TAG_STRING:
      return i.text(i.u32("a string length"), "a string");
    case TAG_BYTES:
      return i.take(i.u32("a byte length"), "bytes").slice();
    case TAG_ARRAY: {
      const n = i.u32("an array length");
      i.need(n, "an array"); // each element takes at least one byte
      const a: StateValue[] = [];
      for (let k = 0; k < n; k++) a.push(dec(i, depth + 1));
      return a;
    }
    case TAG_OBJECT: {
      const n = i.u32("an object size");
      i.need(n * 5, "an object"); // each entry takes at least 5 bytes
      const o: { [key: string]: StateValue } = {};
      for (let k = 0; k < n; k++) {
        const key = i.text(i.u32("a key length"), "a key");
        if (Object.hasOwn(o, key)) i.fail(`duplicate key '${key}'`);
        // defineProperty: a key "__proto__" must stay data, never become the prototype.
        Object.defineProperty(o, key, {
          value: dec(i, depth + 1),
          enumerable: true,
          writable: true,
          configurable: true,
        });
      }
      return o;
    }
    default:
      return i.fail(`unknown tag 0x${tag.toString(16)}`);
  }
}

/**
 * Decodes untrusted bytes into plain state.
 * @throws {SyntaxError} naming the byte offset and what was wrong; never anything else
 */
export function decodeState(bytes: Uint8Array): StateValue {
  const i = new In(bytes);
  const version = i.u8();
  if (version !== STATE_CODEC_VERSION) {
    throw new SyntaxError(`Cannot decode state: codec version ${version}, want ${STATE_CODEC_VERSION}`);
  }
  const v = dec(i, 0);
  if (i.pos !== bytes.length) i.fail(`${bytes.length - i.pos} trailing bytes`);
  return v;
}
