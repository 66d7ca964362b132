/**
 * Black box: migration over TLS between two ferry processes, with certificates made by Debian's
 * `openssl` in the test (a CA, a server and a client certificate, and a second "wrong" CA with its
 * own server and client certificates), laid out with QEMU's file names. The guest's pattern must
 * verify on the destination; every refusal case must fail before any RAM moves, with an error
 * that names the cause, and leave the source running.
 */
import assert from "node:assert/strict";
import {
  assertGuestRuns,
  FINAL,
  freePort,
  type PairOptions,
  ram,
  runState,
  startVm,
  stopVm,
  tempDir,
  type Vm,
  waitMigration,
  withMigrationPair,
} from "./_fixture/migration.ts";
import { onPath, waitIncoming } from "./_fixture/ferry.ts";
import { makeTlsDirs, type TlsDirs } from "./_fixture/tls.ts";

const APPEND = "mode=pattern mib=16 interval_ms=50";
const skip = onPath("openssl") === undefined ? "openssl is not installed" : undefined;

function serverObject(dir: string, verifyPeer = true): string[] {
  return [
    "-object",
    `tls-creds-x509,id=tls0,dir=${dir},endpoint=server,verify-peer=${verifyPeer ? "on" : "off"}`,
  ];
}

function clientObject(dir: string): string[] {
  return ["-object", `tls-creds-x509,id=tls0,dir=${dir},endpoint=client`];
}

/** A destination listening with `-incoming defer` + migrate-set-parameters + migrate-incoming. */
async function deferredDestination(
  dir: string,
  name: string,
  objects: string[],
  params: Record<string, unknown>,
): Promise<{ dst: Vm; uri: string }> {
  const uri = `tcp:127.0.0.1:${freePort()}`;
  const dst = await startVm({ dir, name, append: APPEND, incoming: "defer", extra: objects });
  await dst.qmp.call("migrate-set-parameters", params);
  await dst.qmp.call("migrate-incoming", { uri });
  await waitIncoming(dst.qmp);
  return { dst, uri };
}

Deno.test({
  name:
    "a TLS migration completes and the guest's pattern verifies on the destination (verify-peer=on both ways)",
  ignore: skip !== undefined,
  async fn() {
    const dir = tempDir();
    const t = await makeTlsDirs(dir);
    let src: Vm | undefined;
    let dst: Vm | undefined;
    try {
      src = await startVm({ dir, name: "src", append: APPEND, extra: clientObject(t.client) });
      await src.ferry.waitLine(/PROBE VERIFY ok round=/);
      const d = await deferredDestination(dir, "dst", serverObject(t.server), { "tls-creds": "tls0" });
      dst = d.dst;
      const qp = await dst.qmp.call("query-migrate-parameters") as Record<string, unknown>;
      assert.equal(qp["tls-creds"], "tls0");
      // The uri says 127.0.0.1, the certificate is checked against tls-hostname.
      await src.qmp.call("migrate-set-parameters", { "tls-creds": "tls0", "tls-hostname": "localhost" });
      const sp = await src.qmp.call("query-migrate-parameters") as Record<string, unknown>;
      assert.equal(sp["tls-creds"], "tls0");
      assert.equal(sp["tls-hostname"], "localhost");
      await src.qmp.call("migrate", { uri: d.uri });
      const r = await waitMigration(src.qmp, FINAL, 60000);
      assert.equal(
        r.status,
        "completed",
        JSON.stringify(r) + src.ferry.transcript() + dst.ferry.transcript(),
      );
      const before = dst.ferry.lines.length;
      await dst.ferry.waitLine(/PROBE VERIFY ok round=/, 20000, before);
      assert.ok(!dst.ferry.lines.some((l) => /FAIL|PROBE BOOT/.test(l)), dst.ferry.transcript());
      assert.equal(await runState(dst.qmp), "running");
    } finally {
      await stopVm(src);
      await stopVm(dst);
      Deno.removeSync(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "a TLS migration completes with the destination's credentials on its command line (-global migration.tls-creds, verify-peer=off)",
  ignore: skip !== undefined,
  async fn() {
    const options = async (dir: string): Promise<PairOptions> => {
      const t = await makeTlsDirs(dir);
      return {
        append: APPEND,
        transport: "tcp",
        src: { extra: clientObject(t.client) },
        dst: { extra: [...serverObject(t.server, false), "-global", "migration.tls-creds=tls0"] },
      };
    };
    await withMigrationPair(options, async ({ src, dst, uri }) => {
      await src.ferry.waitLine(/PROBE VERIFY ok round=/);
      // No tls-hostname: the certificate must carry the uri's host (its IP SAN 127.0.0.1).
      await src.qmp.call("migrate-set-parameters", { "tls-creds": "tls0" });
      await src.qmp.call("migrate", { uri });
      const r = await waitMigration(src.qmp, FINAL, 60000);
      assert.equal(
        r.status,
        "completed",
        JSON.stringify(r) + src.ferry.transcript() + dst.ferry.transcript(),
      );
      await dst.ferry.waitLine(/PROBE VERIFY ok round=/, 20000, dst.ferry.lines.length);
      assert.ok(!dst.ferry.lines.some((l) => /FAIL|PROBE BOOT/.test(l)), dst.ferry.transcript());
    });
  },
});

interface RefusalCase {
  name: string;
  /** Source parameters (tls-creds unset = plaintext). */
  source: Record<string, unknown>;
  /** Which client folder the source's -object points at. */
  clientDir: (t: TlsDirs) => string;
  /** Destination: TLS folder, or undefined for plaintext. */
  serverDir: ((t: TlsDirs) => string) | undefined;
  sourceError: RegExp;
  destinationError: RegExp;
}

const CASES: RefusalCase[] = [
  {
    name: "a plaintext source talking to a TLS destination",
    source: {},
    clientDir: (t) => t.client,
    serverDir: (t) => t.server,
    sourceError: /destination speaks TLS and this side does not/,
    destinationError: /source does not speak TLS/,
  },
  {
    name: "a TLS source talking to a plaintext destination",
    source: { "tls-creds": "tls0" },
    clientDir: (t) => t.client,
    serverDir: undefined,
    sourceError: /destination does not speak TLS/,
    destinationError: /source speaks TLS and this side does not/,
  },
  {
    name: "a destination certificate from another CA",
    source: { "tls-creds": "tls0" },
    clientDir: (t) => t.client,
    serverDir: (t) => t.wrongServer,
    sourceError: /destination's certificate is not signed by this side's ca-cert.pem/,
    destinationError: /TLS|certificate|closed/i,
  },
  {
    name: "a wrong tls-hostname",
    source: { "tls-creds": "tls0", "tls-hostname": "other.example" },
    clientDir: (t) => t.client,
    serverDir: (t) => t.server,
    sourceError: /does not match the expected host name/,
    destinationError: /TLS|certificate|closed/i,
  },
  {
    name: "a source without a client certificate (verify-peer=on)",
    source: { "tls-creds": "tls0" },
    clientDir: (t) => t.clientNoCert,
    serverDir: (t) => t.server,
    sourceError: /destination refused: TLS: the source presented no client certificate/,
    destinationError: /source presented no client certificate/,
  },
  {
    name: "a client certificate from another CA",
    source: { "tls-creds": "tls0" },
    clientDir: (t) => t.wrongClient,
    serverDir: (t) => t.server,
    sourceError: /destination refused: TLS: the source's certificate is not signed/,
    destinationError: /source's certificate is not signed by this side's ca-cert.pem/,
  },
];

Deno.test({
  name:
    "TLS refusals: each fails before any RAM moves with an error naming the cause, and the source keeps running",
  ignore: skip !== undefined,
  async fn(t) {
    const dir = tempDir();
    const dirs = await makeTlsDirs(dir);
    try {
      for (const c of CASES) {
        await t.step(c.name, async () => {
          let src: Vm | undefined;
          let dst: Vm | undefined;
          try {
            src = await startVm({ dir, name: "src", append: APPEND, extra: clientObject(c.clientDir(dirs)) });
            const objects = c.serverDir ? serverObject(c.serverDir(dirs)) : [];
            const params = c.serverDir ? { "tls-creds": "tls0" } : {};
            const d = await deferredDestination(dir, "dst", objects, params);
            dst = d.dst;
            await src.ferry.waitLine(/PROBE PROGRESS/);
            if (Object.keys(c.source).length > 0) await src.qmp.call("migrate-set-parameters", c.source);
            await src.qmp.call("migrate", { uri: d.uri });
            const r = await waitMigration(src.qmp, FINAL, 30000);
            assert.equal(r.status, "failed", JSON.stringify(r));
            assert.match(String(r["error-desc"]), c.sourceError, String(r["error-desc"]));
            assert.equal(Number(ram(r).transferred ?? 0), 0, "no RAM moved");
            assert.equal(await runState(src.qmp), "running");
            await assertGuestRuns(src.ferry, "source after a refused TLS migration");
            const st = await dst.ferry.wait(15000);
            assert.notEqual(st.code, 0, "the destination exits non-zero");
            const last = dst.ferry.stderrLines.filter((l) => l.startsWith("ferry:")).pop() ?? "";
            assert.match(last, c.destinationError, dst.ferry.transcript());
            assert.ok(
              !dst.ferry.lines.some((l) => /PROBE VERIFY/.test(l)),
              "the destination never ran the guest",
            );
          } finally {
            await stopVm(src);
            await stopVm(dst);
          }
        });
      }
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "tls-creds naming no -object, or an object of the wrong endpoint, is refused at once",
  ignore: skip !== undefined,
  async fn() {
    const dir = tempDir();
    const t = await makeTlsDirs(dir);
    let src: Vm | undefined;
    try {
      src = await startVm({ dir, name: "src", append: APPEND, extra: serverObject(t.server) });
      const bad = await src.qmp.execute("migrate-set-parameters", { "tls-creds": "nope" });
      assert.match(JSON.stringify(bad), /no -object tls-creds-x509 has that id/);
      await src.qmp.call("migrate-set-parameters", { "tls-creds": "tls0" });
      const r = await src.qmp.execute("migrate", { uri: `tcp:127.0.0.1:${freePort()}` });
      assert.match(JSON.stringify(r), /its endpoint is server, want client/);
      assert.equal(await runState(src.qmp), "running");
    } finally {
      await stopVm(src);
      Deno.removeSync(dir, { recursive: true });
    }
  },
});
