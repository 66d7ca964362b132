/**
 * Black box: capability `multifd` (QEMU's name) between two ferry processes on real KVM with the
 * probe guest: RAM over 2 and 4 extra connections (tcp and unix, `-smp 2`), a channel cut
 * mid-stream, and a capability mismatch.
 */
import assert from "node:assert/strict";
import { Ferry, probeArgs, tempDir, waitIncoming } from "./_fixture/ferry.ts";
import { freePort } from "./_fixture/migration.ts";
import type { QmpClient, QmpMessage } from "./_fixture/qmp_client.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Pair {
  dir: string;
  src: Ferry;
  dst: Ferry;
  sq: QmpClient;
  dq: QmpClient;
  /** Where the destination listens. */
  uri: string;
}

/** Source and `-incoming defer` destination; multifd set on each side as asked, then listening. */
async function pair(o: {
  transport: "tcp" | "unix";
  append: string;
  mem?: string;
  smp?: number;
  srcChannels: number;
  dstChannels: number;
}): Promise<Pair> {
  const dir = tempDir();
  const uri = o.transport === "tcp" ? `tcp:127.0.0.1:${freePort()}` : `unix:${dir}/mig.sock`;
  const base = { smp: o.smp ?? 2, append: o.append, mem: o.mem ?? "256M" };
  const src = new Ferry(probeArgs({ ...base, qmp: `${dir}/src.sock` }), { qmpPath: `${dir}/src.sock` });
  const dst = new Ferry(
    probeArgs({ ...base, qmp: `${dir}/dst.sock`, extra: ["-incoming", "defer"] }),
    { qmpPath: `${dir}/dst.sock` },
  );
  const sq = await src.qmp();
  const dq = await dst.qmp();
  for (const [q, n] of [[sq, o.srcChannels], [dq, o.dstChannels]] as const) {
    if (n > 0) {
      assert.deepEqual(
        await q.execute("migrate-set-capabilities", {
          capabilities: [{ capability: "multifd", state: true }],
        }),
        { return: {} },
      );
      assert.deepEqual(await q.execute("migrate-set-parameters", { "multifd-channels": n }), { return: {} });
    }
  }
  assert.deepEqual(await dq.execute("migrate-incoming", { uri }), { return: {} });
  await waitIncoming(dq);
  return { dir, src, dst, sq, dq, uri };
}

async function cleanup(p: Pair): Promise<void> {
  await p.sq.close();
  await p.dq.close();
  await p.src.kill();
  await p.dst.kill();
  Deno.removeSync(p.dir, { recursive: true });
}

async function waitMigration(q: QmpClient, timeoutMs = 60000): Promise<QmpMessage> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await q.call("query-migrate") as QmpMessage;
    if (["completed", "failed", "canceled"].includes(r.status as string)) return r;
    if (Date.now() > deadline) throw new Error(`migration still ${JSON.stringify(r)}`);
    await sleep(50);
  }
}

Deno.test("multifd: capability and multifd-channels are QEMU's knobs, with QEMU's default and range", async () => {
  const dir = tempDir();
  const f = new Ferry(probeArgs({ qmp: `${dir}/q.sock`, append: "mode=idle" }), { qmpPath: `${dir}/q.sock` });
  try {
    const q = await f.qmp();
    const caps = await q.call("query-migrate-capabilities") as { capability: string; state: boolean }[];
    assert.deepEqual(caps.find((c) => c.capability === "multifd"), { capability: "multifd", state: false });
    assert.equal((await q.call("query-migrate-parameters") as QmpMessage)["multifd-channels"], 2);
    const bad = await q.execute("migrate-set-parameters", { "multifd-channels": 0 });
    assert.match(JSON.stringify(bad), /multifd-channels/);
    assert.ok("error" in bad);
    await q.execute("migrate-set-parameters", { "multifd-channels": 4 });
    assert.equal((await q.call("query-migrate-parameters") as QmpMessage)["multifd-channels"], 4);
    await q.close();
  } finally {
    await f.kill();
    Deno.removeSync(dir, { recursive: true });
  }
});

for (const transport of ["tcp", "unix"] as const) {
  for (const channels of [2, 4]) {
    Deno.test(`multifd over ${transport} with ${channels} channels, -smp 2: the guest continues on the destination and its pattern verifies`, async () => {
      const p = await pair({
        transport,
        append: "mode=pattern mib=32 interval_ms=50",
        srcChannels: channels,
        dstChannels: channels,
      });
      try {
        await p.src.waitLine(/PROBE VERIFY ok round=/);
        assert.deepEqual(await p.sq.execute("migrate", { uri: p.uri }), { return: {} });
        const r = await waitMigration(p.sq);
        assert.equal(
          r.status,
          "completed",
          JSON.stringify(r) + "\n" + p.src.transcript() + p.dst.transcript(),
        );
        const before = p.dst.lines.length;
        const m = await p.dst.waitLine(/PROBE VERIFY ok round=(\d+)/, 20000, before);
        assert.ok(Number(m[1]) > 0);
        for (let cpu = 0; cpu < 2; cpu++) {
          await p.dst.waitLine(new RegExp(`PROBE PROGRESS cpu=${cpu}`), 20000, before);
        }
        assert.ok(!p.dst.lines.some((l) => /FAIL|PROBE BOOT/.test(l)), p.dst.transcript());
        assert.equal((await p.dq.call("query-status") as QmpMessage).status, "running");
        // RAM moved: the destination counted every page of guest RAM as landed, raw or zero. (The
        // pattern is one counter byte a page: in a round that is a multiple of 256 every page is zero
        // and goes as a zero run, so the raw count alone is not a check; a CI run hit it.)
        const d = await p.dq.call("query-migrate") as QmpMessage;
        const ram = d.ram as QmpMessage;
        assert.ok(
          (ram.normal as number) + (ram.duplicate as number) >= (ram.total as number) / 4096,
          JSON.stringify(d),
        );
        assert.ok((ram.normal as number) > 0, JSON.stringify(d));
      } finally {
        await cleanup(p);
      }
    });
  }
}

/**
 * A unix proxy in front of the destination that passes the main connection and cuts the second
 * channel connection after `cutAfter` bytes from the source (a channel dropped mid-stream).
 */
function cuttingProxy(
  listenPath: string,
  targetPath: string,
  cutAfter: number,
): { close(): void; cut: Promise<void> } {
  const l = Deno.listen({ transport: "unix", path: listenPath });
  const conns: Deno.Conn[] = [];
  let cutDone!: () => void;
  const cut = new Promise<void>((r) => (cutDone = r));
  let n = 0;
  (async () => {
    for await (const c of l) {
      const index = n++;
      const d = await Deno.connect({ transport: "unix", path: targetPath });
      conns.push(c, d);
      const pipe = async (from: Deno.Conn, to: Deno.Conn, limit: number) => {
        const buf = new Uint8Array(64 * 1024);
        let moved = 0;
        try {
          for (;;) {
            const k = await from.read(buf);
            if (k === null) break;
            if (moved + k > limit) {
              c.close();
              d.close();
              cutDone();
              return;
            }
            moved += k;
            let o = 0;
            while (o < k) o += await to.write(buf.subarray(o, k));
          }
        } catch { /* closed */ }
        try {
          to.close();
        } catch { /* closed */ }
      };
      void pipe(c, d, index === 2 ? cutAfter : Infinity);
      void pipe(d, c, Infinity);
    }
  })().catch(() => {});
  return {
    cut,
    close() {
      try {
        l.close();
      } catch { /* closed */ }
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
  };
}

Deno.test("multifd: a channel cut mid-stream fails the migration on both sides, and the source keeps running", async () => {
  const p = await pair({
    transport: "unix",
    append: "mode=fill mib=96 rate=0 interval_ms=50",
    mem: "128M",
    srcChannels: 2,
    dstChannels: 2,
  });
  const proxyPath = `${p.dir}/proxy.sock`;
  const proxy = cuttingProxy(proxyPath, p.uri.slice(5), 8 * 1024 * 1024);
  try {
    await p.src.waitLine(/PROBE FILL done|PROBE PROGRESS/, 30000);
    assert.deepEqual(await p.sq.execute("migrate", { uri: `unix:${proxyPath}` }), { return: {} });
    const r = await waitMigration(p.sq);
    await proxy.cut;
    assert.equal(r.status, "failed", JSON.stringify(r));
    assert.match(String(r["error-desc"]), /multifd channel \d: .*closed the connection/, JSON.stringify(r));
    await p.sq.waitEvent("MIGRATION", (e) => (e.data as QmpMessage).status === "failed");
    // The source runs on: status running, and the guest still makes progress.
    assert.equal((await p.sq.call("query-status") as QmpMessage).status, "running");
    const before = p.src.lines.length;
    await p.src.waitLine(/PROBE PROGRESS/, 10000, before);
    // The destination failed too (it exits non-zero).
    assert.notEqual((await p.dst.wait()).code, 0);
  } finally {
    proxy.close();
    await cleanup(p);
  }
});

Deno.test("multifd: a destination without the capability refuses the source with a clear error", async () => {
  const p = await pair({
    transport: "unix",
    append: "mode=idle interval_ms=50",
    srcChannels: 2,
    dstChannels: 0,
  });
  try {
    assert.deepEqual(await p.sq.execute("migrate", { uri: p.uri }), { return: {} });
    const r = await waitMigration(p.sq);
    assert.equal(r.status, "failed", JSON.stringify(r));
    assert.match(
      String(r["error-desc"]),
      /capability multifd is on on the source and off on the destination/,
      JSON.stringify(r),
    );
    assert.equal((await p.sq.call("query-status") as QmpMessage).status, "running");
  } finally {
    await cleanup(p);
  }
});

Deno.test("multifd: different multifd-channels on the two sides are refused", async () => {
  const p = await pair({
    transport: "tcp",
    append: "mode=idle interval_ms=50",
    srcChannels: 2,
    dstChannels: 4,
  });
  try {
    assert.deepEqual(await p.sq.execute("migrate", { uri: p.uri }), { return: {} });
    const r = await waitMigration(p.sq);
    assert.equal(r.status, "failed", JSON.stringify(r));
    assert.match(String(r["error-desc"]), /multifd-channels is 2 on the source and 4 on the destination/);
  } finally {
    await cleanup(p);
  }
});
