import assert from "node:assert/strict";
import { QmpError } from "./protocol.ts";
import { QmpServer, type QmpServerOptions } from "./server.ts";
import { type Json, tempSocketPath, TestClient } from "./_testing.ts";

/** Starts a server in a fresh directory; `done()` closes it and removes the directory. */
async function startServer(options: Partial<QmpServerOptions> = {}) {
  const { dir, path } = await tempSocketPath();
  const server = new QmpServer({ path, ...options });
  await server.listen();
  const clients: TestClient[] = [];
  return {
    server,
    path,
    dir,
    async open(): Promise<TestClient> {
      const { client } = await TestClient.open(path);
      clients.push(client);
      return client;
    },
    async done(): Promise<void> {
      for (const c of clients) c.close();
      await server.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function until(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await delay(10);
  }
}

Deno.test("QmpServer greets with the qemu-shaped version and CRLF", async () => {
  const t = await startServer();
  try {
    const client = await TestClient.connect(t.path);
    const line = await client.readLine();
    client.close();
    assert.ok(line.endsWith("\r\n"));
    assert.deepEqual(JSON.parse(line), {
      QMP: { version: { qemu: { micro: 0, minor: 1, major: 0 }, package: "ferry-0.1.0" }, capabilities: [] },
    });
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer runs commands without qmp_capabilities and accepts it at any time", async () => {
  const t = await startServer();
  try {
    const c = await t.open();
    assert.deepEqual(await c.execute("query-version"), {
      return: { qemu: { micro: 0, minor: 1, major: 0 }, package: "ferry-0.1.0" },
    });
    assert.deepEqual(await c.execute("qmp_capabilities"), { return: {} });
    assert.deepEqual(await c.execute("qmp_capabilities", { enable: [] }), { return: {} });
    assert.deepEqual(await c.execute("qmp_capabilities", { enable: ["oob"] }), {
      error: { class: "GenericError", desc: "Capability 'oob' not available" },
    });
    assert.ok(c.lines.every((l) => l.endsWith("\r\n")));
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer echoes id of any JSON type, on replies and errors", async () => {
  const t = await startServer();
  try {
    const c = await t.open();
    assert.deepEqual(await c.execute("query-commands", undefined, "abc"), {
      return: [{ name: "qmp_capabilities" }, { name: "query-version" }, { name: "query-commands" }],
      id: "abc",
    });
    assert.deepEqual((await c.execute("query-version", undefined, 7)).id, 7);
    assert.deepEqual((await c.execute("query-version", undefined, { n: [1] })).id, { n: [1] });
    assert.deepEqual(await c.execute("nope", undefined, "x1"), {
      error: { class: "CommandNotFound", desc: "The command nope has not been found" },
      id: "x1",
    });
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer answers malformed JSON with GenericError and keeps the connection", async () => {
  const t = await startServer();
  try {
    const c = await t.open();
    await c.sendRaw('{"execute": "query-version",}\n');
    const err = await c.reply();
    assert.equal((err.error as Json).class, "GenericError");
    assert.match((err.error as Json).desc as string, /^JSON parse error, /);
    await c.sendRaw('{"execute":"query-version","id":"unterminated}\n');
    assert.match(((await c.reply()).error as Json).desc as string, /^JSON parse error, /);
    await c.sendRaw("hello world\n");
    assert.match(((await c.reply()).error as Json).desc as string, /^JSON parse error, /);
    // An object left open, then a new command: the broken one is reported, the new one runs.
    await c.sendRaw('{"execute":"query-version"\n{"execute":"query-status"}\n');
    assert.match(((await c.reply()).error as Json).desc as string, /^JSON parse error, /);
    assert.equal(((await c.reply()).error as Json).class, "CommandNotFound");
    assert.deepEqual(await c.execute("qmp_capabilities", undefined, 1), { return: {}, id: 1 });
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer refuses input that is not a command object, naming the problem", async () => {
  const t = await startServer();
  try {
    const c = await t.open();
    const cases: [string, string][] = [
      ["[1,2]", "QMP input must be a JSON object"],
      ["42", "QMP input must be a JSON object"],
      ['{"arguments":{}}', "QMP input lacks member 'execute'"],
      ['{"execute":5}', "QMP input member 'execute' must be a string"],
      ['{"execute":"query-version","arguments":[]}', "QMP input member 'arguments' must be an object"],
      ['{"execute":"query-version","extra":1}', "QMP input member 'extra' is unexpected"],
    ];
    for (const [input, desc] of cases) {
      await c.sendRaw(input + "\n");
      assert.deepEqual(await c.reply(), { error: { class: "GenericError", desc } }, input);
    }
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer splits several objects on one line and objects split across writes", async () => {
  const t = await startServer();
  try {
    const c = await t.open();
    await c.sendRaw(
      '{"execute":"qmp_capabilities","id":1}{"execute":"query-version","id":2} {"execute":"x","id":3}\r\n',
    );
    assert.equal((await c.reply()).id, 1);
    assert.equal((await c.reply()).id, 2);
    assert.equal((await c.reply()).id, 3);
    const text = '{"execute": "qmp_capabilities", "id": "brace } and \\" quote {"}\n';
    for (const ch of new TextEncoder().encode(text)) {
      await c.sendRaw(new Uint8Array([ch]));
    }
    assert.deepEqual(await c.reply(), { return: {}, id: 'brace } and " quote {' });
    await c.sendRaw('{\n  "execute": "qmp_capabilities",\n  "id": "multi-line"\n}\n');
    assert.deepEqual(await c.reply(), { return: {}, id: "multi-line" });
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer checks arguments against the schema and names the argument", async () => {
  const t = await startServer();
  t.server.register("echo", {
    args: { text: { type: "str", required: true }, times: { type: "uint", required: false } },
    handler: ({ text, times }) => ({ text, times: times ?? 1 }),
  });
  try {
    const c = await t.open();
    assert.deepEqual(await c.execute("echo", { text: "hi" }), { return: { text: "hi", times: 1 } });
    assert.deepEqual(await c.execute("echo", {}), {
      error: { class: "GenericError", desc: "Parameter 'text' is missing" },
    });
    assert.deepEqual(await c.execute("echo", { text: 3 }), {
      error: { class: "GenericError", desc: "Invalid parameter type for 'text', expected: string" },
    });
    assert.deepEqual(await c.execute("echo", { text: "hi", loud: true }), {
      error: { class: "GenericError", desc: "Parameter 'loud' is unexpected" },
    });
    assert.deepEqual(await c.execute("echo", { text: "hi", times: -2 }), {
      error: { class: "GenericError", desc: "Parameter 'times' expects a non-negative value, got '-2'" },
    });
    assert.deepEqual(await c.execute("query-version", { verbose: true }), {
      error: { class: "GenericError", desc: "Parameter 'verbose' is unexpected" },
    });
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer turns handler exceptions into errors and keeps serving", async () => {
  const t = await startServer();
  t.server.register("boom", {
    args: {},
    handler: () => {
      throw new Error("Cannot frobnicate 'x'");
    },
  });
  t.server.register("nodev", {
    args: {},
    handler: () => Promise.reject(new QmpError("DeviceNotFound", "Device 'disk9' not found")),
  });
  t.server.register("thrower", {
    args: {},
    handler: () => {
      throw "a string";
    },
  });
  t.server.register("cyclic", {
    args: {},
    handler: () => {
      const o: Json = {};
      o.self = o;
      return o;
    },
  });
  t.server.register("big", { args: {}, handler: () => ({ n: 2n ** 64n + 1n }) });
  try {
    const c = await t.open();
    assert.deepEqual(await c.execute("boom", undefined, 1), {
      error: { class: "GenericError", desc: "Cannot frobnicate 'x'" },
      id: 1,
    });
    assert.deepEqual(await c.execute("nodev"), {
      error: { class: "DeviceNotFound", desc: "Device 'disk9' not found" },
    });
    assert.deepEqual(await c.execute("thrower"), { error: { class: "GenericError", desc: "a string" } });
    assert.equal(((await c.execute("cyclic")).error as Json).class, "GenericError");
    await c.sendRaw('{"execute":"big"}\n');
    assert.equal(await c.readLine(), '{"return":{"n":18446744073709551617}}\r\n');
    assert.deepEqual(await c.execute("qmp_capabilities"), { return: {} });
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer refuses a message over 1 MiB without buffering it and answers afterwards", async () => {
  const t = await startServer();
  try {
    const c = await t.open();
    const chunk = "x".repeat(64 * 1024);
    await c.sendRaw('{"execute":"qmp_capabilities","id":"');
    let maxBuffered = 0;
    for (let i = 0; i < 48; i++) { // 3 MiB inside one string
      await c.sendRaw(chunk);
      if (i % 8 === 7) {
        await delay(5);
        maxBuffered = Math.max(maxBuffered, ...t.server.clients().map((x) => x.inputBufferedBytes));
      }
    }
    await c.sendRaw('"}\n');
    const err = await c.reply();
    assert.equal((err.error as Json).class, "GenericError");
    assert.match((err.error as Json).desc as string, /^Message too large: over 1048576 bytes/);
    assert.ok(maxBuffered <= 1024 * 1024 + 64 * 1024, `buffered ${maxBuffered} bytes`);
    assert.deepEqual(t.server.clients()[0]?.inputBufferedBytes, 0);
    assert.deepEqual(await c.execute("qmp_capabilities", undefined, "after"), { return: {}, id: "after" });
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer sends an emitted event to every client, always with data", async () => {
  const t = await startServer();
  try {
    const a = await t.open();
    const b = await t.open();
    await until(() => t.server.clients().length === 2, "two clients");
    const before = Date.now() / 1000;
    t.server.emit("STOP");
    t.server.emit("SHUTDOWN", { guest: false, reason: "host-qmp-quit" });
    for (const c of [a, b]) {
      const stop = await c.event("STOP");
      assert.deepEqual(Object.keys(stop), ["event", "data", "timestamp"]);
      assert.deepEqual(stop.data, {});
      const ts = stop.timestamp as { seconds: number; microseconds: number };
      assert.ok(Number.isInteger(ts.seconds) && Math.abs(ts.seconds - before) < 5);
      assert.ok(Number.isInteger(ts.microseconds) && ts.microseconds >= 0 && ts.microseconds < 1e6);
      assert.deepEqual((await c.event("SHUTDOWN")).data, { guest: false, reason: "host-qmp-quit" });
    }
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer keeps serving others when a client disconnects mid-command", async () => {
  const t = await startServer();
  let release = () => {};
  const gate = new Promise<void>((r) => release = r);
  let finished = false;
  t.server.register("slow", {
    args: {},
    handler: async () => {
      await gate;
      finished = true;
      return { done: true };
    },
  });
  try {
    const quitter = await TestClient.open(t.path);
    await quitter.client.sendRaw('{"execute":"slow"}\n');
    await delay(20);
    quitter.client.close();
    const other = await t.open();
    assert.deepEqual(await other.execute("qmp_capabilities"), { return: {} });
    release();
    await until(() => finished, "the slow command");
    await until(() => t.server.clients().length === 1, "the gone client to be removed");
    assert.deepEqual(await other.execute("query-version", undefined, 2), {
      return: { qemu: { micro: 0, minor: 1, major: 0 }, package: "ferry-0.1.0" },
      id: 2,
    });
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer drops a client that never reads while events flood, others stay served", async () => {
  const t = await startServer({ maxQueuedOutputBytes: 256 * 1024 });
  try {
    const sleeper = await TestClient.connect(t.path); // never reads, not even the greeting
    const reader = await t.open();
    await until(() => t.server.clients().length === 2, "two clients");
    const data = { blob: "y".repeat(1000) };
    let received = 0;
    const reading = (async () => {
      for (;;) {
        const e = await reader.next();
        if (e.event === "FLOOD") received++;
        if (e.event === "END") return;
      }
    })();
    const readerId = Math.max(...t.server.clients().map((c) => c.id));
    const readerQueue = () => t.server.clients().find((c) => c.id === readerId)?.outputQueuedBytes ?? 0;
    for (let i = 0; i < 4000; i++) { // ~4 MB, far past the kernel buffer and the 256 KiB cap
      t.server.emit("FLOOD", data);
      // Pace to what a client that does read can take; the sleeper takes nothing.
      if (i % 50 === 0) await until(() => readerQueue() < 64 * 1024, "the reader to catch up");
    }
    t.server.emit("END");
    await reading;
    assert.equal(received, 4000);
    await until(() => t.server.clients().length === 1, "the sleeper to be dropped");
    assert.ok(t.server.clients().every((c) => c.outputQueuedBytes <= 256 * 1024));
    assert.deepEqual(await reader.execute("qmp_capabilities"), { return: {} });
    assert.ok(await sleeper.closedByPeer());
    sleeper.close();
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer creates the socket with mode 0600 and removes it on close", async () => {
  const t = await startServer();
  const st = await Deno.lstat(t.path);
  assert.ok(st.isSocket);
  assert.equal(st.mode! & 0o777, 0o600);
  assert.deepEqual([...Deno.readDirSync(t.dir)].map((e) => e.name), ["qmp.sock"]); // no temp leftovers
  await t.server.close();
  await assert.rejects(Deno.lstat(t.path), Deno.errors.NotFound);
  await t.done();
});

Deno.test("QmpServer replaces a stale socket or file but refuses a live server or a directory", async () => {
  const { dir, path } = await tempSocketPath();
  try {
    // A regular file left at the path is replaced.
    await Deno.writeTextFile(path, "stale");
    const first = new QmpServer({ path });
    await first.listen();
    assert.ok((await Deno.lstat(path)).isSocket);
    // A live server is not.
    await assert.rejects(new QmpServer({ path }).listen(), /another process is listening on it/);
    const still = await TestClient.open(path);
    still.client.close();
    await first.close();

    // A dead socket (its process gone without cleanup, as after a crash) is replaced.
    const made = await new Deno.Command("python3", {
      args: ["-c", `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(path)})`],
    }).output();
    assert.ok(made.success, "python3 must create a dead socket");
    const deadIno = (await Deno.lstat(path)).ino;
    const second = new QmpServer({ path });
    await second.listen();
    assert.notEqual((await Deno.lstat(path)).ino, deadIno);
    const fresh = await TestClient.open(path);
    assert.ok("QMP" in fresh.greeting);
    fresh.client.close();
    await second.close();

    await Deno.mkdir(path);
    await assert.rejects(new QmpServer({ path }).listen(), /it is a directory/);
    await Deno.remove(path);
    await assert.rejects(
      new QmpServer({ path: `${dir}/${"n".repeat(120)}` }).listen(),
      /longer than 107 bytes/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("QmpServer keeps mode 0600 when a deep directory leaves no room for its private temp dir", async () => {
  const { dir } = await tempSocketPath();
  const deep = `${dir}/${"d".repeat(100 - dir.length)}`;
  await Deno.mkdir(deep);
  const path = `${deep}/q`; // 102 bytes: fits, but "<deep>/.qmpXXXXXXXXXXXXXXXX/s" would not
  const server = new QmpServer({ path });
  try {
    await server.listen();
    const st = await Deno.lstat(path);
    assert.ok(st.isSocket);
    assert.equal(st.mode! & 0o777, 0o600);
    const { client, greeting } = await TestClient.open(path);
    assert.ok("QMP" in greeting);
    client.close();
    await server.close();
    await assert.rejects(Deno.lstat(path), Deno.errors.NotFound);
    assert.deepEqual([...Deno.readDirSync(deep)], []);
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("QmpServer with wait: true resolves listen() only after a client connects", async () => {
  const { dir, path } = await tempSocketPath();
  const server = new QmpServer({ path, wait: true });
  try {
    let listened = false;
    const listening = server.listen().then(() => listened = true);
    await until(() => {
      try {
        return Deno.lstatSync(path).isSocket === true;
      } catch {
        return false;
      }
    }, "the socket file");
    await delay(100);
    assert.equal(listened, false);
    const { client, greeting } = await TestClient.open(path);
    await listening;
    assert.equal(listened, true);
    assert.ok("QMP" in greeting);
    client.close();
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("QmpServer with wait: true rejects listen() when closed before any client", async () => {
  const { dir, path } = await tempSocketPath();
  const server = new QmpServer({ path, wait: true });
  const listening = server.listen();
  await until(() => {
    try {
      return Deno.lstatSync(path).isSocket === true;
    } catch {
      return false;
    }
  }, "the socket file");
  const refused = assert.rejects(listening, /server closed/);
  await server.close();
  await refused;
  await Deno.remove(dir, { recursive: true });
});

Deno.test("QmpServer makes clients past maxClients wait and greets each in turn, never sending another first line", async () => {
  const t = await startServer({ maxClients: 2 });
  try {
    const first = await t.open();
    await t.open();
    const extra = await TestClient.connect(t.path); // queued in the listen backlog
    // The extra client may send at once; nothing is read or answered before it is greeted.
    await extra.sendRaw('{"execute":"query-version","id":"queued"}\n');
    first.close();
    assert.ok("QMP" in await extra.next(), "the first line a waiting client reads is the greeting");
    assert.equal((await extra.reply()).id, "queued");
    extra.close();
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer serves 100 concurrent clients with the default limit: every first line is a greeting", async () => {
  const t = await startServer();
  let most = 0;
  const sampler = setInterval(() => (most = Math.max(most, t.server.clients().length)), 1);
  try {
    const results = await Promise.all(Array.from({ length: 100 }, async (_, i) => {
      const c = await TestClient.connect(t.path);
      try {
        const first = await c.next(60000);
        const reply = await c.execute("query-version", undefined, i);
        return { first, id: reply.id };
      } finally {
        c.close();
      }
    }));
    for (const [i, r] of results.entries()) {
      assert.ok("QMP" in r.first, `client ${i} first read ${JSON.stringify(r.first)}`);
      assert.equal(r.id, i);
    }
    assert.ok(most <= 16, `${most} clients were served at once`);
  } finally {
    clearInterval(sampler);
    await t.done();
  }
});

Deno.test("QmpServer.register() refuses a duplicate name", async () => {
  const { dir, path } = await tempSocketPath();
  const server = new QmpServer({ path });
  assert.throws(
    () => server.register("query-version", { args: {}, handler: () => ({}) }),
    /already registered/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("QmpServer runs afterReply actions only once the reply is written", async () => {
  const t = await startServer();
  const order: string[] = [];
  t.server.register("bye", {
    args: {},
    handler: (_args, ctx) => {
      ctx.afterReply(() => void order.push("after"));
      order.push("handler");
      return {};
    },
  });
  try {
    const c = await t.open();
    assert.deepEqual(await c.execute("bye"), { return: {} });
    await until(() => order.length === 2, "the after-reply action");
    assert.deepEqual(order, ["handler", "after"]);
  } finally {
    await t.done();
  }
});

/** A server with one command, `probe`, that records the arguments it ran with. */
async function startProbeServer() {
  const t = await startServer();
  const ran: Json[] = [];
  t.server.register("probe", {
    args: { n: { type: "uint", required: false }, s: { type: "str", required: false } },
    handler: (args) => {
      ran.push(args);
      return {};
    },
  });
  return { ...t, ran };
}

Deno.test('QmpServer refuses "arguments": null instead of running the command without arguments (QEMU)', async () => {
  const t = await startProbeServer();
  try {
    const c = await t.open();
    await c.sendRaw('{"execute":"probe","arguments":null}\n');
    assert.deepEqual(await c.reply(), {
      error: { class: "GenericError", desc: "QMP input member 'arguments' must be an object" },
    });
    assert.deepEqual(t.ran, []);
    await c.sendRaw('{"execute":"probe"}\n');
    assert.deepEqual(await c.reply(), { return: {} });
    assert.equal(t.ran.length, 1);
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer refuses duplicate keys at any level (QEMU: JSON parse error, duplicate key)", async () => {
  const t = await startProbeServer();
  try {
    const c = await t.open();
    const dup = { error: { class: "GenericError", desc: "JSON parse error, duplicate key" } };
    await c.sendRaw('{"execute":"probe","execute":"quit"}\n');
    assert.deepEqual(await c.reply(), dup);
    await c.sendRaw('{"execute":"probe","arguments":{"n":1,"n":2}}\n');
    assert.deepEqual(await c.reply(), dup);
    await c.sendRaw('{"execute":"probe","id":{"a":1,"a":1}}\n');
    assert.deepEqual(await c.reply(), dup);
    assert.deepEqual(t.ran, []);
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer refuses invalid UTF-8 instead of replacing it", async () => {
  const t = await startProbeServer();
  try {
    const c = await t.open();
    const bad = [[0xff], [0xc3], [0xed, 0xa0, 0x80], [0xc0, 0xaf]];
    for (const seq of bad) {
      const head = new TextEncoder().encode('{"execute":"probe","arguments":{"s":"');
      await c.sendRaw(new Uint8Array([...head, ...seq, ...new TextEncoder().encode('"}}\n')]));
      assert.deepEqual(await c.reply(), {
        error: { class: "GenericError", desc: "JSON parse error, invalid UTF-8 sequence in string" },
      }, `bytes ${seq}`);
    }
    assert.deepEqual(t.ran, []);
    await c.sendRaw('{"execute":"probe","arguments":{"s":"\u00e9\u00e9 é"},"id":"é"}\n');
    assert.deepEqual(await c.reply(), { return: {}, id: "é" });
    assert.deepEqual(t.ran, [{ s: "éé é" }]);
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer refuses 300.0 and 3e2 where an integer is required (QEMU: expects uint64)", async () => {
  const t = await startProbeServer();
  try {
    const c = await t.open();
    for (const n of ["300.0", "3e2", "3E+2", "1.5"]) {
      await c.sendRaw(`{"execute":"probe","arguments":{"n":${n}}}\n`);
      assert.deepEqual(await c.reply(), {
        error: { class: "GenericError", desc: "Parameter 'n' expects uint64" },
      }, n);
    }
    await c.sendRaw('{"execute":"probe","arguments":{"n":300}}\n');
    assert.deepEqual(await c.reply(), { return: {} });
    assert.deepEqual(t.ran, [{ n: 300 }]);
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer echoes id byte for byte: large integers, long numbers, floats, nested values", async () => {
  const t = await startProbeServer();
  try {
    const c = await t.open();
    const long = "1".repeat(400);
    const cases: [string, string][] = [
      ["12345678901234567890", "12345678901234567890"],
      ["-9223372036854775809", "-9223372036854775809"],
      [long, long],
      ["1.50", "1.50"],
      ["1e2", "1e2"],
      ['{"a": [1, true, null]}', '{"a":[1,true,null]}'],
      ["[\n 1,\r\n 2 ]", "[1,2]"],
      ['"a b\\u00e9 \\/"', '"a b\\u00e9 \\/"'],
      ["null", "null"],
    ];
    for (const [sent, echoed] of cases) {
      await c.sendRaw(`{"execute":"probe","id":${sent}}\n`);
      const line = await c.readLine();
      assert.equal(line, `{"return":{},"id":${echoed}}\r\n`);
      await c.sendRaw(`{"execute":"no-such","id":${sent}}\n`);
      assert.equal(
        await c.readLine(),
        `{"error":{"class":"CommandNotFound","desc":"The command no-such has not been found"},"id":${echoed}}\r\n`,
      );
    }
  } finally {
    await t.done();
  }
});

Deno.test("QmpServer keeps a connection working after refusing 100,000 open brackets or a 4 MiB unclosed object", async () => {
  const t = await startServer();
  try {
    const c = await t.open();
    await c.sendRaw("[".repeat(100_000) + '\n{"execute":"query-version","id":1}\n');
    assert.deepEqual(await c.reply(), {
      error: { class: "GenericError", desc: "Invalid JSON: nesting deeper than 1024 levels" },
    });
    assert.equal((await c.reply()).id, 1);

    await c.sendRaw(
      '{"execute":"query-status"' + " ".repeat(4 * 1024 * 1024) + '\n{"execute":"query-version","id":2}\n',
    );
    const err = await c.reply(30000);
    assert.match((err.error as Json).desc as string, /^Message too large: over 1048576 bytes/);
    assert.equal((await c.reply(30000)).id, 2);
    assert.equal(t.server.clients()[0]?.inputBufferedBytes, 0);
  } finally {
    await t.done();
  }
});
