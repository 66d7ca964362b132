import assert from "node:assert/strict";
import { ErrnoError } from "../ffi/errno.ts";
import { HEADER_BYTES, MessageReader, MessageWriter } from "./stream.ts";
import { connectMigration, MigrationListener, parseMigrationUri, StallGuard } from "./transport.ts";
import type { SocketMigrationUri } from "./uri.ts";

const PAGE = 4096;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A unix migration connection as the source makes it (connectMigration, by reference unless told
 * otherwise), and the accepted end.
 */
async function withUnixMigration(
  body: (source: Deno.Conn, destination: Deno.Conn) => Promise<void>,
  byReference = true,
): Promise<void> {
  const dir = Deno.makeTempDirSync();
  const target = parseMigrationUri(`unix:${dir}/m.sock`) as SocketMigrationUri;
  const listener = new MigrationListener(target);
  try {
    const accepting = listener.acceptOne();
    const source = await connectMigration(target, { byReference });
    const destination = await accepting;
    try {
      await body(source, destination);
    } finally {
      for (const c of [source, destination]) {
        try {
          c.close();
        } catch { /* closed by the test */ }
      }
    }
  } finally {
    listener.close();
    Deno.removeSync(dir, { recursive: true });
  }
}

/** Reads until EOF, `delayMs` between reads of at most `chunk` bytes. */
async function readAll(conn: Deno.Conn, delayMs = 0, chunk = 1 << 20): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(chunk);
  for (;;) {
    if (delayMs) await sleep(delayMs);
    const n = await conn.read(buf);
    if (n === null) break;
    parts.push(buf.slice(0, n));
  }
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let off = 0;
  for (const p of parts) out.set(p, (off += p.length) - p.length);
  return out;
}

/** Distinct pages: every page differs from every other (a paused guest's filled RAM). */
function pages(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n * PAGE);
  const w = new Uint32Array(b.buffer);
  for (let i = 0; i < w.length; i++) w[i] = Math.imul(i + 1, 2654435761) ^ seed;
  return b;
}

Deno.test("a unix source sends a paused guest's pages by reference: in-place messages arrive whole, in order, with their checksums", () =>
  withUnixMigration(async (source, destination) => {
    const guard = new StallGuard(source, { peer: "destination", writeTimeoutMs: 5000 });
    assert.ok(guard.byReference, "the unix source connection sends pages by reference");
    const w = new MessageWriter(guard);
    // 12 MiB of pages in three messages: more than the pipe (1 MiB) and the send buffer (4 MiB).
    const ram = pages(3072, 0x5a5a);
    const table = Uint8Array.of(7, 7, 7);
    const crcs = new Uint32Array(1024);
    const sending = (async () => {
      for (let m = 0; m < 3; m++) {
        await w.sendPagesInPlaceQueued(
          "ram",
          table,
          [ram.subarray(m * 1024 * PAGE, (m + 1) * 1024 * PAGE)],
          crcs,
        );
        await w.send("ack"); // a copied message between by-reference ones
      }
      await w.drain();
      guard.close();
      source.close();
    })();
    // The destination's reader checks each message's sequence number and CRC32C. It waits longer
    // than a shim call does before each read, so calls return with pages still in the pipe.
    const reader = new MessageReader({ read: (p) => sleep(120).then(() => destination.read(p)) }, "source");
    const got = new Uint8Array(ram.length);
    for (let m = 0; m < 3; m++) {
      assert.equal((await reader.readHeader())?.kind, "ram");
      const t = new Uint8Array(3);
      await reader.readExact(t, "run table");
      assert.deepEqual(Array.from(t), [7, 7, 7]);
      await reader.readPages(
        got.subarray(m * 1024 * PAGE, (m + 1) * 1024 * PAGE),
        "RAM pages",
        new Uint32Array(1024),
      );
      const ack = await reader.readHeader();
      assert.equal(ack?.kind, "ack");
      await reader.readPayload(ack!);
    }
    assert.equal(await reader.readHeader(), null);
    await sending;
    assert.ok(got.every((v, i) => v === ram[i]), "every page arrived as it was");
  }));

Deno.test("pages by reference: a slow reader (waits longer than a shim call's wait) gets everything", () =>
  withUnixMigration(async (source, destination) => {
    const guard = new StallGuard(source, { peer: "destination", writeTimeoutMs: 5000 });
    const ref = guard.byReference!;
    const ram = pages(2048, 0x1234); // 8 MiB
    const received = readAll(destination, 150, 1 << 21);
    for (let off = 0; off < ram.length;) off += await ref.write(ram.subarray(off));
    while (ref.queued > 0) await ref.write(new Uint8Array(0));
    guard.close();
    source.close();
    const bytes = await received;
    assert.equal(bytes.length, ram.length);
    assert.ok(bytes.every((v, i) => v === ram[i]));
  }));

Deno.test("pages by reference: a destination that goes away fails the write with the errno, and the process lives on", () =>
  withUnixMigration(async (source, destination) => {
    const ref = new StallGuard(source, { peer: "destination", writeTimeoutMs: 5000 }).byReference!;
    const ram = pages(4096, 7); // 16 MiB: more than the socket takes without a reader
    destination.close();
    await assert.rejects(
      async () => {
        for (let off = 0; off < ram.length;) off += await ref.write(ram.subarray(off));
      },
      (e: Error) => e instanceof ErrnoError && /EPIPE|errno 104/.test(e.message),
    );
  }));

Deno.test("pages by reference: close() ends a write waiting for room, then closes the socket", () =>
  withUnixMigration(async (source, destination) => {
    const ref = new StallGuard(source, { peer: "destination", writeTimeoutMs: 0 }).byReference!;
    const ram = pages(4096, 9);
    const writing = (async () => {
      for (let off = 0; off < ram.length;) off += await ref.write(ram.subarray(off));
    })();
    await sleep(150); // the socket is full: the write waits for room
    source.close();
    await assert.rejects(writing, Deno.errors.BadResource);
    // The socket was closed after the wait ended: the destination reads what was sent, then EOF.
    const rest = await readAll(destination);
    assert.ok(rest.length > 0 && rest.length < ram.length);
    assert.ok(rest.every((v, i) => v === ram[i]));
  }));

Deno.test("MessageWriter moves every page it handed over by reference into the socket before its next write", async () => {
  // A fake connection whose by-reference writes take all of `p` but leave it queued until the
  // next call, and whose plain writes refuse to overtake queued bytes (as PlainConn does).
  const wire: string[] = [];
  let queued = 0;
  const sink = {
    write(p: Uint8Array) {
      if (queued) return Promise.reject(new Error("overtook queued pages"));
      wire.push(`copy ${p.length}`);
      return Promise.resolve(p.length);
    },
    byReference: {
      write(p: Uint8Array) {
        if (queued) wire.push(`ref ${queued}`);
        queued = p.length;
        return Promise.resolve(p.length);
      },
      get queued() {
        return queued;
      },
    },
  };
  const w = new MessageWriter(sink);
  const ram = pages(2, 1);
  await w.sendPagesInPlaceQueued(
    "ram",
    Uint8Array.of(1),
    [ram.subarray(0, PAGE), ram.subarray(PAGE)],
    new Uint32Array(2),
  );
  await w.send("ack");
  await w.drain();
  // Header and table copied; each page by reference, in the socket before the next write.
  assert.deepEqual(wire, [`copy ${HEADER_BYTES + 1}`, `ref ${PAGE}`, `ref ${PAGE}`, `copy ${HEADER_BYTES}`]);
  assert.equal(queued, 0);
});

Deno.test("a unix source connection copies unless asked to send by reference (capability zero-copy-send off)", () =>
  withUnixMigration((source) => {
    assert.equal(new StallGuard(source, { peer: "destination" }).byReference, undefined);
    return Promise.resolve();
  }, false));
