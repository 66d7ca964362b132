import assert from "node:assert/strict";
import {
  connectMigration,
  MigrationListener,
  parseMigrationUri,
  StallError,
  StallGuard,
} from "./transport.ts";

Deno.test("parseMigrationUri reads tcp and unix uris", () => {
  assert.deepEqual(parseMigrationUri("tcp:127.0.0.1:4446"), {
    kind: "tcp",
    uri: "tcp:127.0.0.1:4446",
    host: "127.0.0.1",
    port: 4446,
  });
  assert.deepEqual(parseMigrationUri("tcp:[::1]:1"), {
    kind: "tcp",
    uri: "tcp:[::1]:1",
    host: "::1",
    port: 1,
  });
  assert.deepEqual(parseMigrationUri("unix:/tmp/m.sock"), {
    kind: "unix",
    uri: "unix:/tmp/m.sock",
    path: "/tmp/m.sock",
  });
  assert.equal(parseMigrationUri("tcp:0.0.0.0:0", { listen: true }).kind, "tcp");
  assert.deepEqual(parseMigrationUri("file:/var/lib/vm 1.snap"), {
    kind: "file",
    uri: "file:/var/lib/vm 1.snap",
    path: "/var/lib/vm 1.snap",
  });
});

Deno.test("parseMigrationUri rejects bad uris naming them", () => {
  for (
    const [uri, re] of [
      ["tcp:host", /'tcp:host': want tcp:HOST:PORT/],
      ["tcp::4446", /empty host/],
      ["tcp:h:99999", /port 99999 is outside 1..65535/],
      ["tcp:h:0", /port 0 is outside 1..65535/],
      ["tcp:h:x1", /bad port 'x1'/],
      ["tcp:::1:5", /IPv6 host as \[ADDR\]/],
      ["unix:", /'unix:': empty path/],
      ["exec:cat", /'exec:cat': exec: is not supported; want tcp:HOST:PORT, unix:PATH or file:PATH/],
      ["udp:h:1", /'udp:h:1': want tcp:HOST:PORT, unix:PATH or file:PATH/],
      ["file:", /'file:': empty path/],
      ["file:/s,offset=4096", /offset= is not supported/],
      ["tcp:[zz]:5", /'zz' is not an IPv6 address/],
    ] as const
  ) assert.throws(() => parseMigrationUri(uri), (e: Error) => e instanceof TypeError && re.test(e.message));
});

Deno.test("MigrationListener accepts one connection and removes its unix socket", async () => {
  const dir = Deno.makeTempDirSync();
  const target = { kind: "unix", uri: `unix:${dir}/s.sock`, path: `${dir}/s.sock` } as const;
  const l = new MigrationListener(target);
  assert.throws(() => new MigrationListener(target), /Cannot listen on 'unix:.*s\.sock'/);
  const [server, client] = await Promise.all([l.acceptOne(), connectMigration(target)]);
  server.close();
  client.close();
  assert.throws(() => Deno.statSync(`${dir}/s.sock`), Deno.errors.NotFound);
  await assert.rejects(() => connectMigration(target), /Cannot connect to 'unix:.*': No such file/);
});

/** Runs `body` with a unix listener in a fresh directory; `pair()` connects to it. */
async function withUnixPairs(
  body: (pair: () => Promise<{ conn: Deno.Conn; peer: Deno.Conn }>) => Promise<void>,
): Promise<void> {
  const dir = Deno.makeTempDirSync();
  const path = `${dir}/s.sock`;
  const listener = Deno.listen({ transport: "unix", path });
  try {
    await body(async () => {
      const accepting = listener.accept();
      const conn = await Deno.connect({ transport: "unix", path });
      return { conn, peer: await accepting };
    });
  } finally {
    listener.close();
    Deno.removeSync(dir, { recursive: true });
  }
}

Deno.test("StallGuard fails a write the peer takes nothing of, and a read that gets nothing, then closes", () =>
  withUnixPairs(async (pair) => {
    const { conn, peer } = await pair();
    const guard = new StallGuard(conn, { peer: "destination", readTimeoutMs: 100, writeTimeoutMs: 100 });
    // The peer never reads: the socket buffer fills, then a write stalls.
    const chunk = new Uint8Array(1 << 20);
    await assert.rejects(
      async () => {
        for (let i = 0; i < 1000; i++) await guard.write(chunk);
      },
      (e: Error) =>
        e instanceof StallError && /could not send anything to the destination for 0.1 s/.test(e.message),
    );
    assert.ok(guard.stalled instanceof StallError);
    // Closed: later operations fail at once with the same error.
    await assert.rejects(() => guard.read(new Uint8Array(10)), StallError);
    peer.close();

    const second = await pair();
    const g2 = new StallGuard(second.conn, { peer: "source", readTimeoutMs: 100 });
    await second.peer.write(new Uint8Array([1, 2, 3]));
    assert.equal(await g2.read(new Uint8Array(10)), 3, "a read that gets bytes is fine");
    await assert.rejects(() => g2.read(new Uint8Array(10)), /received nothing from the source for 0.1 s/);
    g2.setReadTimeout(0);
    second.peer.close();
  }));

Deno.test("StallGuard lets a slow but moving connection run past its timeout: each read waits less than it", () =>
  withUnixPairs(async (pair) => {
    const { conn, peer } = await pair();
    const guard = new StallGuard(conn, { peer: "source", readTimeoutMs: 300 });
    const t0 = performance.now();
    const feeding = (async () => {
      for (let i = 0; i < 10; i++) {
        await new Promise((r) => setTimeout(r, 60));
        await peer.write(new Uint8Array([i]));
      }
    })();
    const got: number[] = [];
    const buf = new Uint8Array(1);
    for (let i = 0; i < 10; i++) {
      assert.equal(await guard.read(buf), 1);
      got.push(buf[0]!);
    }
    await feeding;
    assert.deepEqual(got, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.ok(performance.now() - t0 > 1.5 * 300, "the reads together outlasted the timeout");
    assert.equal(guard.stalled, undefined);
    // Then nothing comes: the next read stalls after the timeout (the watchdog re-armed itself).
    const last = guard.read(buf);
    last.catch(() => {});
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("no stall within 2 s")), 2000);
    });
    await assert.rejects(() => Promise.race([last, late]), /received nothing from the source for 0.3 s/);
    clearTimeout(timer);
    guard.close();
    peer.close();
  }));

Deno.test("StallGuard fails a stalled read with the stall even when the closed connection ends it as EOF (as a TLS one does)", async () => {
  // A connection whose pending read resolves with null (end of stream) once it is closed.
  let eof: (() => void) | undefined;
  const conn = {
    read: () => new Promise<number | null>((resolve) => (eof = () => resolve(null))),
    write: (p: Uint8Array) => Promise.resolve(p.length),
    close: () => eof?.(),
  } as unknown as Deno.Conn;
  const guard = new StallGuard(conn, { peer: "destination", readTimeoutMs: 50 });
  // The guard's timer keeps no process alive, and this fake holds no resource that would.
  const alive = setTimeout(() => {}, 5000);
  await assert.rejects(
    () => guard.read(new Uint8Array(4)),
    (e: Error) =>
      e instanceof StallError && /received nothing from the destination for 0.05 s/.test(e.message),
  );
  clearTimeout(alive);
  guard.close();
});
