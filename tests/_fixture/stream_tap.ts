/**
 * A man in the middle for migration tests: a unix-socket proxy between a source and a
 * destination that parses the source's stream by the wire table in docs/migration.md (header size
 * and message kinds from stream.ts), records it, and may change a message on its way (a change
 * that should get past the destination's CRC32C check must reseal the message with stream.ts's
 * `sealMessage`, as a forger would). Replies (destination → source) pass through untouched.
 * @module
 */
import { HEADER_BYTES, HEADER_LENGTH_OFFSET, MessageKind } from "../../src/migration/stream.ts";

/** One message of a captured stream. */
export interface WireMessage {
  /** Offset of its header in the stream. */
  offset: number;
  kind: number;
  /** Payload length from the header. */
  length: number;
}

/** Splits a well-formed stream into messages (stops at a header it cannot read). */
export function parseMessages(b: Uint8Array): WireMessage[] {
  const out: WireMessage[] = [];
  let o = 0;
  while (o + HEADER_BYTES <= b.length) {
    const v = new DataView(b.buffer, b.byteOffset + o, HEADER_BYTES);
    const length = Number(v.getBigUint64(HEADER_LENGTH_OFFSET, true));
    if (o + HEADER_BYTES + length > b.length) break;
    out.push({ offset: o, kind: v.getUint16(10, true), length });
    o += HEADER_BYTES + length;
  }
  return out;
}

async function readExact(conn: Deno.Conn, n: number): Promise<Uint8Array | null> {
  const b = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = await conn.read(b.subarray(got));
    if (r === null) return null;
    got += r;
  }
  return b;
}

async function writeAll(conn: Deno.Conn, b: Uint8Array): Promise<void> {
  let o = 0;
  while (o < b.length) o += await conn.write(b.subarray(o));
}

/** A running proxy. */
export interface Tap {
  /** `unix:PATH` for the source's `migrate`. */
  uri: string;
  /** The source's stream as it arrived (before any change). */
  captured(): Uint8Array;
  /** Settles when both directions ended. */
  done: Promise<void>;
  close(): void;
}

/**
 * Listens on `path` and forwards one connection to the unix socket `target`.
 * @param change may return a different message (header + payload) for message `index`; `nextKind`
 *   is the kind of the message after it (undefined after `config` and `complete`, which the source
 *   sends and then waits on, and at the end)
 */
export function startTap(
  path: string,
  target: string,
  change?: (index: number, kind: number, message: Uint8Array, nextKind: number | undefined) => Uint8Array,
): Tap {
  const listener = Deno.listen({ transport: "unix", path });
  const chunks: Uint8Array[] = [];
  let closed = false;
  const conns: Deno.Conn[] = [];
  const done = (async () => {
    const src = await listener.accept();
    listener.close();
    const dst = await Deno.connect({ transport: "unix", path: target });
    conns.push(src, dst);
    const up = (async () => {
      // One message of lookahead, so that `change` knows which message comes next.
      let pending: { i: number; kind: number; m: Uint8Array } | undefined;
      const forward = async (nextKind: number | undefined) => {
        if (!pending) return;
        const { i, kind, m } = pending;
        pending = undefined;
        await writeAll(dst, change ? change(i, kind, m, nextKind) : m);
      };
      for (let i = 0;; i++) {
        const h = await readExact(src, HEADER_BYTES);
        if (!h) break;
        const kind = new DataView(h.buffer).getUint16(10, true);
        // Control messages that wait for an answer go at once (the source waits for the ack).
        await forward(kind);
        const len = Number(new DataView(h.buffer).getBigUint64(HEADER_LENGTH_OFFSET, true));
        const p = await readExact(src, len);
        if (!p) break;
        const m = new Uint8Array(HEADER_BYTES + len);
        m.set(h);
        m.set(p, HEADER_BYTES);
        chunks.push(m);
        pending = { i, kind, m };
        if (kind === MessageKind.config || kind === MessageKind.complete) await forward(undefined);
      }
      await forward(undefined);
      await dst.closeWrite().catch(() => {});
    })().catch(() => {});
    const down = (async () => {
      const buf = new Uint8Array(65536);
      for (;;) {
        const n = await dst.read(buf);
        if (n === null) break;
        await writeAll(src, buf.subarray(0, n));
      }
    })().catch(() => {});
    await Promise.all([up, down]);
    for (const c of [src, dst]) {
      try {
        c.close();
      } catch { /* closed */ }
    }
  })().catch(() => {});
  return {
    uri: `unix:${path}`,
    captured() {
      const n = chunks.reduce((a, c) => a + c.length, 0);
      const out = new Uint8Array(n);
      let o = 0;
      for (const c of chunks) {
        out.set(c, o);
        o += c.length;
      }
      return out;
    },
    done,
    close() {
      if (closed) return;
      closed = true;
      try {
        listener.close();
      } catch { /* closed */ }
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
  };
}
