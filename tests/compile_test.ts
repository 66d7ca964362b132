/**
 * `deno task compile` builds one executable with the shim and the vCPU worker inside; when it can
 * be built here (it needs Deno's `denort` runtime: downloaded by deno, or `DENORT_BIN`), the
 * binary boots the probe guest, answers QMP and migrates to a second copy of itself.
 */
import assert from "node:assert/strict";
import { Ferry, probeArgs, ROOT, tempDir, waitIncoming } from "./_fixture/ferry.ts";
import type { QmpMessage } from "./_fixture/qmp_client.ts";

const out = tempDir();
const bin = `${out}/ferry`;
const compile = await new Deno.Command(Deno.execPath(), {
  args: [
    "compile",
    "-A",
    "--include",
    `${ROOT}zig-out/lib/libferry_shim.so`,
    "--include",
    `${ROOT}src/machine/vcpu_worker.ts`,
    "--include",
    `${ROOT}src/devices/virtio/io_worker.ts`,
    "--output",
    bin,
    `${ROOT}main.ts`,
  ],
  stdout: "piped",
  stderr: "piped",
  env: { NO_COLOR: "1" },
}).output();
const stderr = new TextDecoder().decode(compile.stderr);
const why = /dns error|denort/i.test(stderr)
  ? "deno compile cannot download its denort runtime here and DENORT_BIN is unset"
  : `deno compile failed: ${
    stderr.split("\n").find((l) => /error/i.test(l))?.slice(0, 100) ?? "unknown error"
  }`;
const built = compile.success;

Deno.test({
  name: built
    ? "the compiled ferry boots the probe guest, answers QMP and migrates to a second copy of itself"
    : `the compiled ferry runs end to end (skipped: ${why})`,
  ignore: !built,
  fn: async () => {
    const dir = tempDir();
    const env = { FERRY_BIN: bin };
    const src = new Ferry(probeArgs({ qmp: `${dir}/s.sock`, append: "mode=pattern mib=8 interval_ms=50" }), {
      qmpPath: `${dir}/s.sock`,
      env,
    });
    const uri = `unix:${dir}/m.sock`;
    const dst = new Ferry(
      probeArgs({ append: "mode=pattern mib=8 interval_ms=50", extra: ["-incoming", uri] }),
      { env },
    );
    const q = await src.qmp();
    try {
      await src.waitLine(/PROBE VERIFY ok/);
      await waitIncoming(`${dir}/m.sock`);
      await q.call("migrate", { uri });
      let r: QmpMessage;
      do {
        await new Promise((res) => setTimeout(res, 100));
        r = await q.call("query-migrate") as QmpMessage;
      } while (r.status === "setup" || r.status === "active");
      assert.equal(r.status, "completed", JSON.stringify(r));
      await dst.waitLine(/PROBE VERIFY ok/, 10000, dst.lines.length);
    } finally {
      await q.close();
      await src.kill();
      await dst.kill();
      Deno.removeSync(dir, { recursive: true });
    }
  },
});

globalThis.addEventListener("unload", () => Deno.removeSync(out, { recursive: true }));
