/**
 * A strict JSON parser for QMP input, strict where QEMU's `json-parser.c` is strict, over the raw
 * bytes of one frame from {@link JsonSplitter}:
 * - invalid UTF-8 is refused (never replaced by U+FFFD);
 * - a key repeated in one object is refused (`JSON parse error, duplicate key`, QEMU's words);
 * - numbers keep their literal kind: an integer literal becomes a `number`, or a `bigint` when it is
 *   not a safe integer (so nothing is rounded), and a literal with a fraction or an exponent (`300.0`,
 *   `3e2`) becomes a {@link JsonFloat}, which an integer argument refuses as QEMU does;
 * - the source text of the top-level `id` member is kept, so a reply can echo it byte for byte.
 *
 * Objects are built with own data properties only, so a key such as `__proto__` is just a key.
 * Nesting depth is bounded by the splitter (1024) before a frame reaches this parser.
 * @module
 */

/** A JSON number written with a fraction or an exponent (`1.5`, `300.0`, `3e2`). */
export class JsonFloat {
  /**
   * @param value the number's value
   * @param text the literal as written
   */
  constructor(readonly value: number, readonly text: string) {}
}

/** What {@link parseQmpJson} returns. */
export interface ParsedJson {
  /** The value: objects, arrays, strings, booleans, null, `number`, `bigint` and {@link JsonFloat}. */
  value: unknown;
  /**
   * When the value is an object with an `id` member: that member's source text, with the
   * whitespace between its tokens removed (a reply line cannot carry a newline); else undefined.
   */
  idText?: string;
}

/** A parse failure; its message is the `desc` QMP replies with. */
export class JsonParseError extends SyntaxError {
  /** @param what e.g. `duplicate key`; the message becomes `JSON parse error, <what>` */
  constructor(what: string) {
    super(`JSON parse error, ${what}`);
    this.name = "JsonParseError";
  }
}

const QUOTE = 0x22;
const MAX_BIGINT_DIGITS = 64;
const BACKSLASH = 0x5c;
const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function isSpace(b: number | undefined): boolean {
  return b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
}

function isDigit(b: number | undefined): boolean {
  return b !== undefined && b >= 0x30 && b <= 0x39;
}

const ESCAPES: Record<number, string> = {
  0x22: '"',
  0x5c: "\\",
  0x2f: "/",
  0x62: "\b",
  0x66: "\f",
  0x6e: "\n",
  0x72: "\r",
  0x74: "\t",
};

/** Minifies one JSON value's source: drops whitespace outside strings. */
function minify(bytes: Uint8Array): string {
  const out = new Uint8Array(bytes.length);
  let n = 0;
  let inString = false;
  let escape = false;
  for (const b of bytes) {
    if (inString) {
      if (escape) escape = false;
      else if (b === BACKSLASH) escape = true;
      else if (b === QUOTE) inString = false;
    } else if (b === QUOTE) {
      inString = true;
    } else if (isSpace(b)) {
      continue;
    }
    out[n++] = b;
  }
  return decoder.decode(out.subarray(0, n));
}

class Parser {
  readonly #b: Uint8Array;
  #i = 0;
  idSpan: [number, number] | undefined;

  constructor(bytes: Uint8Array) {
    this.#b = bytes;
  }

  parseTop(): unknown {
    const v = this.#value(true);
    this.#skipSpace();
    if (this.#i < this.#b.length) throw this.#stray();
    return v;
  }

  #skipSpace(): void {
    while (isSpace(this.#b[this.#i])) this.#i++;
  }

  #stray(): JsonParseError {
    const b = this.#b[this.#i];
    if (b === undefined) return new JsonParseError("unexpected end of input");
    if (b >= 0x21 && b < 0x7f) return new JsonParseError(`stray '${String.fromCharCode(b)}'`);
    return new JsonParseError(`stray byte 0x${b.toString(16).padStart(2, "0")}`);
  }

  #value(top = false): unknown {
    this.#skipSpace();
    const b = this.#b[this.#i];
    if (b === undefined) throw new JsonParseError("expecting value");
    switch (b) {
      case 0x7b:
        return this.#object(top);
      case 0x5b:
        return this.#array();
      case QUOTE:
        return this.#string();
      case 0x74:
        return this.#literal("true", true);
      case 0x66:
        return this.#literal("false", false);
      case 0x6e:
        return this.#literal("null", null);
      default:
        if (b === 0x2d || isDigit(b)) return this.#number();
        throw b >= 0x80 ? this.#stray() : new JsonParseError("expecting value");
    }
  }

  #literal(word: string, value: unknown): unknown {
    for (let k = 0; k < word.length; k++) {
      if (this.#b[this.#i + k] !== word.charCodeAt(k)) throw new JsonParseError("expecting value");
    }
    this.#i += word.length;
    return value;
  }

  #object(top: boolean): Record<string, unknown> {
    const obj: Record<string, unknown> = {};
    const seen = new Set<string>();
    this.#i++; // {
    this.#skipSpace();
    if (this.#b[this.#i] === 0x7d) {
      this.#i++;
      return obj;
    }
    for (;;) {
      this.#skipSpace();
      if (this.#b[this.#i] !== QUOTE) {
        throw new JsonParseError(
          this.#b[this.#i] === undefined ? "expecting value" : "key is not a string in dict",
        );
      }
      const key = this.#string();
      this.#skipSpace();
      if (this.#b[this.#i] !== 0x3a) throw new JsonParseError("missing : in object pair");
      this.#i++;
      if (seen.has(key)) throw new JsonParseError("duplicate key");
      seen.add(key);
      this.#skipSpace();
      const start = this.#i;
      const v = this.#value();
      if (top && key === "id") this.idSpan = [start, this.#i];
      Object.defineProperty(obj, key, { value: v, enumerable: true, writable: true, configurable: true });
      this.#skipSpace();
      const sep = this.#b[this.#i];
      if (sep === 0x2c) {
        this.#i++;
        continue;
      }
      if (sep === 0x7d) {
        this.#i++;
        return obj;
      }
      throw new JsonParseError(sep === undefined ? "unexpected end of input" : "expected separator in dict");
    }
  }

  #array(): unknown[] {
    const arr: unknown[] = [];
    this.#i++; // [
    this.#skipSpace();
    if (this.#b[this.#i] === 0x5d) {
      this.#i++;
      return arr;
    }
    for (;;) {
      arr.push(this.#value());
      this.#skipSpace();
      const sep = this.#b[this.#i];
      if (sep === 0x2c) {
        this.#i++;
        continue;
      }
      if (sep === 0x5d) {
        this.#i++;
        return arr;
      }
      throw new JsonParseError(sep === undefined ? "unexpected end of input" : "expected separator in list");
    }
  }

  #string(): string {
    const b = this.#b;
    this.#i++; // opening quote
    let out = "";
    let runStart = this.#i;
    for (;;) {
      const c = b[this.#i];
      if (c === undefined) throw new JsonParseError("missing closing quote in string");
      if (c === QUOTE || c === BACKSLASH) {
        out += this.#decodeRun(runStart, this.#i);
        if (c === QUOTE) {
          this.#i++;
          return out;
        }
        out += this.#escape();
        runStart = this.#i;
        continue;
      }
      if (c < 0x20) throw new JsonParseError("control character in string");
      this.#i++;
    }
  }

  #decodeRun(start: number, end: number): string {
    if (start === end) return "";
    try {
      return decoder.decode(this.#b.subarray(start, end));
    } catch {
      throw new JsonParseError("invalid UTF-8 sequence in string");
    }
  }

  #escape(): string {
    const b = this.#b;
    const e = b[this.#i + 1];
    if (e === undefined) throw new JsonParseError("missing closing quote in string");
    const simple = ESCAPES[e];
    if (simple !== undefined) {
      this.#i += 2;
      return simple;
    }
    if (e !== 0x75) throw new JsonParseError("invalid escape sequence in string");
    const hex = String.fromCharCode(...b.subarray(this.#i + 2, this.#i + 6));
    if (!/^[0-9a-fA-F]{4}$/.test(hex)) throw new JsonParseError("invalid hex escape sequence in string");
    this.#i += 6;
    return String.fromCharCode(parseInt(hex, 16));
  }

  #number(): number | bigint | JsonFloat {
    const b = this.#b;
    const start = this.#i;
    let float = false;
    if (b[this.#i] === 0x2d) this.#i++;
    if (b[this.#i] === 0x30) {
      this.#i++;
      if (isDigit(b[this.#i])) throw new JsonParseError("leading zero in number");
    } else if (isDigit(b[this.#i])) {
      while (isDigit(b[this.#i])) this.#i++;
    } else {
      throw new JsonParseError("expecting value");
    }
    if (b[this.#i] === 0x2e) {
      float = true;
      this.#i++;
      if (!isDigit(b[this.#i])) throw new JsonParseError("invalid number");
      while (isDigit(b[this.#i])) this.#i++;
    }
    if (b[this.#i] === 0x65 || b[this.#i] === 0x45) {
      float = true;
      this.#i++;
      if (b[this.#i] === 0x2b || b[this.#i] === 0x2d) this.#i++;
      if (!isDigit(b[this.#i])) throw new JsonParseError("invalid number");
      while (isDigit(b[this.#i])) this.#i++;
    }
    const text = decoder.decode(b.subarray(start, this.#i));
    if (float) return new JsonFloat(Number(text), text);
    const n = Number(text);
    if (Number.isSafeInteger(n)) return n;
    // Exact beyond 2^53; a literal too long to be any machine integer stays a (rounded) number.
    return text.length <= MAX_BIGINT_DIGITS ? BigInt(text) : n;
  }
}

/**
 * Parses one QMP input frame.
 * @param bytes the frame's raw bytes
 * @returns the value and, for an object with `id`, the id's source text
 * @throws JsonParseError with QEMU-like wording (`JSON parse error, duplicate key`)
 *
 * @example
 * ```ts
 * const { value, idText } = parseQmpJson(new TextEncoder().encode('{"execute":"stop","id":12345678901234567890}'));
 * idText; // "12345678901234567890"
 * ```
 */
export function parseQmpJson(bytes: Uint8Array): ParsedJson {
  const p = new Parser(bytes);
  const value = p.parseTop();
  if (p.idSpan === undefined) return { value };
  return { value, idText: minify(bytes.subarray(p.idSpan[0], p.idSpan[1])) };
}

/**
 * Turns parsed values into plain JSON-like values: {@link JsonFloat} becomes its number; `bigint` stays.
 * For arguments typed `number` or `object`, whose handlers expect plain values.
 */
export function plainJson(v: unknown): unknown {
  if (v instanceof JsonFloat) return v.value;
  if (Array.isArray(v)) return v.map(plainJson);
  if (typeof v === "object" && v !== null) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      Object.defineProperty(out, k, {
        value: plainJson(x),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  }
  return v;
}
