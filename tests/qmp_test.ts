/**
 * Black box: QMP against a running ferry with the probe guest, over the real socket.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { Ferry, probeArgs, tempDir } from "./_fixture/ferry.ts";
import { QmpClient } from "./_fixture/qmp_client.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("QMP stop and cont pause and resume the guest, with STOP/RESUME to every client", async () => {
  const dir = tempDir();
  const sock = `${dir}/qmp.sock`;
  const f = new Ferry(probeArgs({ smp: 2, qmp: sock, append: "mode=idle interval_ms=50" }), {
    qmpPath: sock,
  });
  let a: QmpClient | undefined, b: QmpClient | undefined;
  try {
    a = await f.qmp();
    b = await f.qmp();
    assert.ok("QMP" in a.greeting);
    await f.waitLine(/PROBE PROGRESS cpu=1/);
    assert.deepEqual(await a.call("query-status"), { status: "running", running: true, singlestep: false });
    const cpus = await a.call("query-cpus-fast") as { "cpu-index": number; "thread-id": number }[];
    assert.equal(cpus.length, 2);
    assert.ok(cpus.every((c) => c["thread-id"] > 0));

    assert.deepEqual(await a.execute("stop"), { return: {} });
    await a.waitEvent("STOP");
    await b.waitEvent("STOP");
    assert.equal((await a.call("query-status") as { status: string }).status, "paused");
    await sleep(150);
    const frozen = f.lines.length;
    await sleep(400);
    assert.equal(f.lines.length, frozen, "no guest output while paused");

    assert.deepEqual(await b.execute("cont"), { return: {} });
    await a.waitEvent("RESUME");
    await b.waitEvent("RESUME");
    await f.waitLine(/PROBE PROGRESS cpu=0/, 5000, frozen);
    assert.ok(!f.lines.some((l) => l.includes("FAIL")));

    assert.deepEqual(await a.execute("quit"), { return: {} });
    const st = await f.wait();
    assert.equal(st.code, 0, f.transcript());
    assert.ok(!existsSync(sock), "the QMP socket is removed on exit");
  } finally {
    await a?.close();
    await b?.close();
    await f.kill();
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("QMP system_reset reboots the guest and emits RESET", async () => {
  const dir = tempDir();
  const sock = `${dir}/qmp.sock`;
  const f = new Ferry(probeArgs({ qmp: sock, append: "mode=idle interval_ms=50" }), { qmpPath: sock });
  const q = await f.qmp();
  try {
    await f.waitLine(/PROBE READY/);
    const from = f.lines.length;
    assert.deepEqual(await q.execute("system_reset"), { return: {} });
    await q.waitEvent("RESET");
    await f.waitLine(/PROBE BOOT/, 10000, from);
    await f.waitLine(/PROBE READY/, 10000, from);
    assert.equal((await q.call("query-status") as { status: string }).status, "running");
  } finally {
    await q.close();
    await f.kill();
    Deno.removeSync(dir, { recursive: true });
  }
});

// This test connects as soon as the socket file exists. ferry used to accept clients before the guest
// started, so under load a client could read `prelaunch` or the boot's RESUME event between replies
// (msgs[1] was that event). ferry now accepts only once the guest runs; the early client waits in
// the listen backlog, so no event precedes these replies.
Deno.test("QMP keeps answering after malformed input and unknown commands on a live VM", async () => {
  const dir = tempDir();
  const sock = `${dir}/qmp.sock`;
  const f = new Ferry(probeArgs({ qmp: sock }), { qmpPath: sock });
  try {
    const conn = await (async () => {
      for (let i = 0; i < 200; i++) {
        try {
          return await Deno.connect({ transport: "unix", path: sock });
        } catch {
          await sleep(50);
        }
      }
      throw new Error("no QMP socket");
    })();
    const enc = new TextEncoder();
    await conn.write(
      enc.encode('{"execute": nope}\n{"execute":"no-such-command"}\n{"execute":"query-status","id":7}\n'),
    );
    const dec = new TextDecoder();
    let text = "";
    const buf = new Uint8Array(65536);
    while ((text.match(/\n/g) ?? []).length < 4) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += dec.decode(buf.subarray(0, n));
    }
    conn.close();
    const msgs = text.trim().split(/\r?\n/).map((l) => JSON.parse(l));
    assert.ok("QMP" in msgs[0]);
    assert.equal(msgs[1].error.class, "GenericError");
    assert.equal(msgs[2].error.class, "CommandNotFound");
    assert.equal(msgs[3].id, 7);
    assert.equal(msgs[3].return.status, "running");
  } finally {
    await f.kill();
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("QMP on a live VM refuses what QEMU refuses: null arguments, duplicate keys, invalid UTF-8, 300.0 for an integer", async () => {
  const dir = tempDir();
  const sock = `${dir}/qmp.sock`;
  const f = new Ferry(probeArgs({ qmp: sock }), { qmpPath: sock });
  try {
    const q = await f.qmp();
    await q.close();
    const conn = await Deno.connect({ transport: "unix", path: sock });
    const enc = new TextEncoder();
    const lines = [
      '{"execute":"quit","arguments":null}',
      '{"execute":"query-status","execute":"quit"}',
      '{"execute":"migrate-set-parameters","arguments":{"downtime-limit":300.0}}',
      '{"execute":"migrate-set-parameters","arguments":{"downtime-limit":3e2}}',
      '{"execute":"query-status","id":12345678901234567890}',
    ];
    const bad = new Uint8Array([
      ...enc.encode('{"execute":"query-status","id":"'),
      0xff,
      ...enc.encode('"}\n'),
    ]);
    await conn.write(enc.encode(lines.join("\n") + "\n"));
    await conn.write(bad);
    await conn.write(enc.encode('{"execute":"query-status","id":"after"}\n'));
    const dec = new TextDecoder();
    let text = "";
    const buf = new Uint8Array(65536);
    while ((text.match(/\n/g) ?? []).length < 8) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += dec.decode(buf.subarray(0, n));
    }
    conn.close();
    const got = text.split("\r\n").filter((l) => l !== "");
    assert.ok(got[0]!.startsWith('{"QMP":'));
    const err = (desc: string) => JSON.stringify({ error: { class: "GenericError", desc } });
    assert.deepEqual(got.slice(1), [
      err("QMP input member 'arguments' must be an object"),
      err("JSON parse error, duplicate key"),
      err("Parameter 'downtime-limit' expects uint64"),
      err("Parameter 'downtime-limit' expects uint64"),
      '{"return":{"status":"running","running":true,"singlestep":false},"id":12345678901234567890}',
      err("JSON parse error, invalid UTF-8 sequence in string"),
      '{"return":{"status":"running","running":true,"singlestep":false},"id":"after"}',
    ], f.transcript());
    assert.equal((await (await f.qmp()).call("query-status") as { status: string }).status, "running");
  } finally {
    await f.kill();
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("socat, as an operator would use it, gets the greeting and a query-migrate reply from a running ferry", async () => {
  const dir = tempDir();
  const sock = `${dir}/qmp.sock`;
  const f = new Ferry(probeArgs({ qmp: sock }), { qmpPath: sock });
  try {
    await (await f.qmp()).close(); // the socket is up
    const out = await new Deno.Command("socat", {
      args: ["-t", "2", "-", `UNIX-CONNECT:${sock}`],
      stdin: "piped",
      stdout: "piped",
    }).spawn();
    const w = out.stdin.getWriter();
    await w.write(new TextEncoder().encode('{"execute":"qmp_capabilities"}\n{"execute":"query-migrate"}\n'));
    await sleep(500);
    await w.close();
    const text = new TextDecoder().decode((await out.output()).stdout);
    const msgs = text.trim().split(/\r\n/).map((l) => JSON.parse(l));
    assert.ok("QMP" in msgs[0]);
    assert.deepEqual(msgs[1], { return: {} });
    assert.deepEqual(
      msgs[2],
      { return: { status: "setup" } },
      "a running VM is set up and ready to migrate (StratoVirt)",
    );
  } finally {
    await f.kill();
    Deno.removeSync(dir, { recursive: true });
  }
});
