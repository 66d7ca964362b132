/**
 * Black box: QEMU's own python QMP library, `qemu.qmp` (pinned in scripts/setup.sh), drives two ferry
 * processes: it connects (17 clients: the last waits until one leaves), reads events, migrates the
 * guest and receives an ExecuteError.
 */
import assert from "node:assert/strict";
import { exists, Ferry, probeArgs, ROOT, tempDir } from "./_fixture/ferry.ts";
import { freePort } from "./_fixture/migration.ts";

const QMPLIB = `${ROOT}.tools/qemu-qmp`;
const skip = exists(`${QMPLIB}/qemu/qmp/__init__.py`)
  ? undefined
  : "qemu.qmp is not installed (run sh scripts/setup.sh)";

Deno.test({
  name: "qemu.qmp connects to ferry, reads STOP/RESUME/MIGRATION events, migrates and gets ExecuteError",
  ignore: skip !== undefined,
  fn: async () => {
    const dir = tempDir();
    const uri = `tcp:127.0.0.1:${freePort()}`;
    const append = "mode=pattern mib=16 interval_ms=50";
    const src = new Ferry(probeArgs({ append, qmp: `${dir}/src.sock` }), { qmpPath: `${dir}/src.sock` });
    const dst = new Ferry(probeArgs({ append, qmp: `${dir}/dst.sock`, extra: ["-incoming", uri] }), {
      qmpPath: `${dir}/dst.sock`,
    });
    try {
      await src.waitLine(/PROBE VERIFY ok round=/);
      await (await dst.qmp()).close(); // the destination's socket is up
      const out = await new Deno.Command("python3", {
        args: [`${ROOT}tests/_fixture/qemu_qmp_drive.py`, `${dir}/src.sock`, `${dir}/dst.sock`, uri],
        env: { PYTHONPATH: QMPLIB },
        stdout: "piped",
        stderr: "piped",
        signal: AbortSignal.timeout(120000),
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, stderr + src.transcript() + dst.transcript());
      const seen = JSON.parse(new TextDecoder().decode(out.stdout));
      assert.equal(seen.greeting.QMP.version.package, "ferry-0.1.0");
      assert.equal(seen.dst_status_before, "inmigrate");
      assert.equal(seen.seventeenth_status, "running", "the 17th client is served once one leaves");
      assert.equal(seen.stop_event.event, "STOP");
      assert.equal(seen.resume_event.event, "RESUME");
      assert.equal(seen.execute_error.class, "GenericError");
      assert.match(seen.execute_error.desc, /bogus/);
      assert.equal(seen.command_not_found, "CommandNotFound");
      assert.equal(seen.migration_events.at(-1), "completed", JSON.stringify(seen));
      assert.ok(seen.migration_events.includes("active"), JSON.stringify(seen.migration_events));
      assert.equal(seen.query_migrate, "completed");
      assert.equal(seen.src_status_after, "postmigrate");
      assert.equal(seen.dst_status_after, "running");
      assert.equal(seen.legacy_status, "running");
      const from = dst.lines.length;
      await dst.waitLine(/PROBE VERIFY ok round=/, 20000, from);
    } finally {
      await src.kill();
      await dst.kill();
      Deno.removeSync(dir, { recursive: true });
    }
  },
});
