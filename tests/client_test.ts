/**
 * Black box: the operator client in the same executable (`ferry qmp`, `ferry migrate --watch`,
 * `ferry migrate-status`) against running ferry processes, and `-D` logging.
 */
import assert from "node:assert/strict";
import { Ferry, probeArgs, tempDir, waitIncoming } from "./_fixture/ferry.ts";

async function client(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const f = new Ferry(args);
  const st = await f.wait(60000);
  return { code: st.code, stdout: f.lines.join("\n"), stderr: f.stderrLines.join("\n") };
}

Deno.test("ferry qmp runs one command and prints its return, with exit codes for errors and bad usage", async () => {
  const dir = tempDir();
  const sock = `${dir}/q.sock`;
  const vm = new Ferry(probeArgs({ qmp: sock }), { qmpPath: sock });
  try {
    await vm.waitLine(/PROBE READY/);
    const ok = await client(["qmp", "--socket", sock, "query-status"]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.deepEqual(JSON.parse(ok.stdout), { status: "running", running: true, singlestep: false });

    const withArgs = await client([
      "qmp",
      "--socket",
      sock,
      "migrate-set-parameters",
      '{"downtime-limit": 100}',
    ]);
    assert.equal(withArgs.code, 0, withArgs.stderr);
    const params = await client(["qmp", "--socket", sock, "query-migrate-parameters"]);
    assert.equal(JSON.parse(params.stdout)["downtime-limit"], 100);

    const unknown = await client(["qmp", "--socket", sock, "no-such-command"]);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /CommandNotFound/);

    const badJson = await client(["qmp", "--socket", sock, "migrate", "{nope"]);
    assert.equal(badJson.code, 2);
    assert.match(badJson.stderr, /JSON-ARGS/);

    const noSocket = await client(["qmp", "query-status"]);
    assert.equal(noSocket.code, 2);
    assert.match(noSocket.stderr, /--socket/);

    const missing = await client(["qmp", "--socket", `${dir}/nobody.sock`, "query-status"]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /Cannot connect/);
  } finally {
    await vm.kill();
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("ferry migrate --watch shows progress during a real migration and exits 0 when it completes", async () => {
  const dir = tempDir();
  const uri = `unix:${dir}/m.sock`;
  const log = `${dir}/src.log`;
  const src = new Ferry(
    probeArgs({ qmp: `${dir}/s.sock`, append: "mode=pattern mib=16 interval_ms=50", extra: ["-D", log] }),
    {
      env: { FERRY_LOG: "info" },
    },
  );
  const dst = new Ferry(
    probeArgs({ append: "mode=pattern mib=16 interval_ms=50", extra: ["-incoming", uri] }),
  );
  try {
    await src.waitLine(/PROBE VERIFY ok/);
    await waitIncoming(`${dir}/m.sock`);
    const r = await client([
      "migrate",
      "--socket",
      `${dir}/s.sock`,
      "--uri",
      uri,
      "--watch",
      "--interval",
      "50",
      "--max-bandwidth",
      String(64 << 20),
    ]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /active\s+\[[#.]+\]\s+\d+%\s+sent [\d.]+ \w+\s+remaining/);
    assert.match(r.stdout, /migration completed/);
    assert.match(r.stdout, /downtime \d+ ms/);
    await dst.waitLine(/PROBE VERIFY ok/, 10000, dst.lines.length);
    // -D: the log went to the file, never to the console.
    const text = Deno.readTextFileSync(log);
    assert.match(text, /Migration status/);
    assert.ok(!src.lines.some((l) => /INFO|Migration status/.test(l)), "no log lines on the serial console");
    assert.ok(!src.stderrLines.some((l) => /Migration status/.test(l)), "no log lines on stderr");
    const st = await client(["migrate-status", "--socket", `${dir}/s.sock`]);
    assert.equal(st.code, 0);
    assert.match(st.stdout, /completed/);
  } finally {
    await src.kill();
    await dst.kill();
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("ferry migrate exits 1 with the reason when the migration fails", async () => {
  const dir = tempDir();
  const src = new Ferry(probeArgs({ qmp: `${dir}/s.sock` }));
  try {
    await src.waitLine(/PROBE READY/);
    const r = await client([
      "migrate",
      "--socket",
      `${dir}/s.sock`,
      "--uri",
      `unix:${dir}/nobody.sock`,
      "--watch",
    ]);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /migration failed/);
    assert.match(r.stdout, /error: /);
  } finally {
    await src.kill();
    Deno.removeSync(dir, { recursive: true });
  }
});
