/**
 * Splits a QMP input byte stream into JSON texts, one per top-level object, whatever the reads look
 * like: several objects on one line, an object split across reads or lines, CR/LF anywhere between.
 *
 * It tracks strings, escapes and bracket depth on raw UTF-8 bytes (multi-byte sequences never contain
 * ASCII bytes, so no decoding is needed to find boundaries). It does not validate JSON or UTF-8:
 * `parseQmpJson` (json_parser.ts) does that on each frame's bytes. It recovers from the common breakages so a connection stays usable:
 * - a raw newline inside a string ends that (broken) frame;
 * - `{` or `[` where a value cannot start (e.g. a new command after an unclosed object) ends the broken
 *   frame and starts a new one;
 * - bytes outside any object form a frame that ends at the next newline;
 * - a frame over `maxMessageBytes`, or nested deeper than `maxDepth`, is reported once and then
 *   discarded without buffering up to the next newline, however deep the discarded text was (a
 *   refused `[[[[…` never closes, so waiting for depth 0 would swallow the connection for good).
 * @module
 */

/** One unit of input: the raw bytes of one JSON text, or a refusal the splitter decided on. */
export type SplitFrame =
  | { kind: "text"; bytes: Uint8Array }
  | { kind: "refused"; desc: string };

/** Limits for {@link JsonSplitter}. */
export interface JsonSplitterOptions {
  /**
   * Largest frame, in bytes, that is buffered; a longer one is refused and skipped.
   * @default 1048576
   */
  maxMessageBytes?: number;
  /**
   * Deepest nesting of objects and arrays accepted (QEMU's JSON parser uses 1024).
   * @default 1024
   */
  maxDepth?: number;
}

const LF = 0x0a;
const CR = 0x0d;
const SPACE = 0x20;
const TAB = 0x09;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const LBRACE = 0x7b;
const RBRACE = 0x7d;
const LBRACKET = 0x5b;
const RBRACKET = 0x5d;
const COLON = 0x3a;
const COMMA = 0x2c;

type Mode = "idle" | "object" | "garbage" | "discard";

function isSpace(b: number): boolean {
  return b === SPACE || b === LF || b === CR || b === TAB;
}

/**
 * A streaming splitter of JSON objects.
 *
 * @example
 * ```ts
 * const s = new JsonSplitter();
 * s.push(new TextEncoder().encode('{"execute":"st'));      // []
 * s.push(new TextEncoder().encode('op"}{"execute":"cont"}')); // two text frames
 * ```
 */
export class JsonSplitter {
  readonly #maxBytes: number;
  readonly #maxDepth: number;
  #mode: Mode = "idle";
  #chunks: Uint8Array[] = []; // bytes of the current frame from earlier pushes
  #chunkBytes = 0;
  #depth = 0;
  #inString = false;
  #escape = false;
  #last = 0; // last byte outside strings in the current frame

  /** @param options limits; see {@link JsonSplitterOptions} */
  constructor(options: JsonSplitterOptions = {}) {
    this.#maxBytes = options.maxMessageBytes ?? 1024 * 1024;
    this.#maxDepth = options.maxDepth ?? 1024;
  }

  /** Bytes currently held for an incomplete frame (never much above `maxMessageBytes`). */
  get bufferedBytes(): number {
    return this.#chunkBytes;
  }

  /**
   * Feeds bytes and returns the frames they complete, in order.
   * @param data the bytes just read; not kept after the call returns (frames hold copies)
   */
  push(data: Uint8Array): SplitFrame[] {
    const out: SplitFrame[] = [];
    let start = 0; // where the current frame begins within `data` (0 if it began in an earlier push)
    for (let i = 0; i < data.length; i++) {
      const b = data[i]!;
      switch (this.#mode) {
        case "idle":
          if (isSpace(b)) continue;
          start = i;
          if (b === LBRACE || b === LBRACKET) this.#open(b);
          else this.#startGarbage();
          continue;
        case "garbage":
          if (b === LF) {
            out.push(this.#finish(data, start, i));
            this.#mode = "idle";
          }
          continue;
        case "discard":
          this.#discardByte(b);
          continue;
        case "object":
          break;
      }
      // "object" mode
      if (this.#inString) {
        if (this.#escape) this.#escape = false;
        else if (b === BACKSLASH) this.#escape = true;
        else if (b === QUOTE) this.#inString = false;
        else if (b === LF) {
          out.push(this.#finish(data, start, i)); // raw newline in a string: broken frame
          this.#mode = "idle";
        }
        continue;
      }
      if (b === QUOTE) {
        this.#inString = true;
        this.#last = b;
      } else if (b === LBRACE || b === LBRACKET) {
        const last = this.#last;
        if (last !== COLON && last !== COMMA && last !== LBRACKET) {
          out.push(this.#finish(data, start, i)); // a value cannot start here: resync on this byte
          start = i;
          this.#open(b);
        } else if (++this.#depth > this.#maxDepth) {
          out.push({ kind: "refused", desc: `Invalid JSON: nesting deeper than ${this.#maxDepth} levels` });
          this.#startDiscard();
        } else {
          this.#last = b;
        }
      } else if (b === RBRACE || b === RBRACKET) {
        this.#last = b;
        if (--this.#depth === 0) {
          out.push(this.#finish(data, start, i + 1));
          this.#mode = "idle";
        }
      } else if (!isSpace(b)) {
        this.#last = b;
      }
    }
    if (this.#mode === "object" || this.#mode === "garbage") {
      const total = this.#chunkBytes + data.length - start;
      if (total > this.#maxBytes) {
        out.push(this.#tooLarge(total));
        this.#startDiscard();
      } else {
        this.#chunks.push(data.slice(start));
        this.#chunkBytes = total;
      }
    }
    return out;
  }

  #open(b: number): void {
    this.#mode = "object";
    this.#depth = 1;
    this.#inString = false;
    this.#escape = false;
    this.#last = b;
  }

  #startGarbage(): void {
    this.#mode = "garbage";
    this.#depth = 0;
    this.#inString = false;
    this.#escape = false;
  }

  #tooLarge(bytes: number): SplitFrame {
    return {
      kind: "refused",
      desc:
        `Message too large: over ${this.#maxBytes} bytes (${bytes} so far), discarded up to the next line`,
    };
  }

  /** Ends the current frame at `data[end]` (exclusive) and resets the buffer. */
  #finish(data: Uint8Array, start: number, end: number): SplitFrame {
    const total = this.#chunkBytes + end - start;
    const chunks = this.#chunks;
    this.#chunks = [];
    this.#chunkBytes = 0;
    if (total > this.#maxBytes) return this.#tooLarge(total);
    let bytes: Uint8Array;
    if (chunks.length === 0) {
      bytes = data.slice(start, end);
    } else {
      bytes = new Uint8Array(total);
      let at = 0;
      for (const c of chunks) {
        bytes.set(c, at);
        at += c.length;
      }
      bytes.set(data.subarray(start, end), at);
    }
    return { kind: "text", bytes };
  }

  #startDiscard(): void {
    this.#mode = "discard";
    this.#chunks = [];
    this.#chunkBytes = 0;
  }

  /**
   * Discard mode buffers nothing and ends at the next newline, whatever the depth: a newline is the
   * one resynchronisation point a client can always send, and QMP clients end every command with one.
   */
  #discardByte(b: number): void {
    if (b !== LF) return;
    this.#mode = "idle";
    this.#depth = 0;
    this.#inString = false;
    this.#escape = false;
  }
}
