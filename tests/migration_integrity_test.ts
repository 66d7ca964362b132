/**
 * Black box: the end-to-end digest at switch-over. A proxy between a real source and a real
 * destination flips one bit of one RAM page on the wire; the destination must refuse before the
 * guest runs, and the source must roll back and keep running.
 */
import assert from "node:assert/strict";
import { MessageKind } from "../src/migration/stream.ts";
import {
  assertGuestRuns,
  FINAL,
  runState,
  startVm,
  stopVm,
  tempDir,
  type Vm,
  waitMigration,
} from "./_fixture/migration.ts";
import { waitIncoming } from "./_fixture/ferry.ts";
import { startTap } from "./_fixture/stream_tap.ts";

const APPEND = "mode=pattern mib=8 interval_ms=50";

Deno.test("a single flipped bit in a RAM page on the wire is refused at switch-over and the source keeps running", async () => {
  const dir = tempDir();
  let src: Vm | undefined;
  let dst: Vm | undefined;
  const tap = { flipped: false };
  const proxy = startTap(`${dir}/tap.sock`, `${dir}/dst.sock`, (_i, kind, m, next) => {
    // The last RAM message, sent while the source is paused (the pattern guest rewrites all its
    // pages all the time, so earlier copies are sent again): flip one bit in its page bytes.
    if (tap.flipped || kind !== MessageKind.ram || next !== MessageKind.state) return m;
    const v = new DataView(m.buffer, m.byteOffset);
    const bytesStart = 24 + 8 + v.getUint32(24, true) * 16;
    if (m.length <= bytesStart) return m;
    tap.flipped = true;
    const out = m.slice();
    out[bytesStart + Math.floor((m.length - bytesStart) / 2)]! ^= 0x04;
    return out;
  });
  try {
    src = await startVm({ dir, name: "src", append: APPEND, mem: "128M" });
    dst = await startVm({ dir, name: "dst", append: APPEND, mem: "128M", incoming: `unix:${dir}/dst.sock` });
    await waitIncoming(dst.qmp);
    await src.ferry.waitLine(/PROBE VERIFY ok round=/);
    await src.qmp.call("migrate", { uri: proxy.uri });
    const r = await waitMigration(src.qmp, FINAL, 60000);
    assert.ok(tap.flipped, "the proxy flipped a bit");
    assert.equal(r.status, "failed", JSON.stringify(r));
    assert.match(String(r["error-desc"]), /guest RAM differs from the source's/, String(r["error-desc"]));
    assert.equal(await runState(src.qmp), "running");
    await assertGuestRuns(src.ferry, "source after the refused migration");
    const st = await dst.ferry.wait(15000);
    assert.notEqual(st.code, 0);
    assert.ok(
      dst.ferry.stderrLines.some((l) => /Cannot verify the switch-over digest: guest RAM differs/.test(l)),
      dst.ferry.transcript(),
    );
    assert.ok(!dst.ferry.lines.some((l) => /PROBE/.test(l)), "the destination guest never ran");
  } finally {
    proxy.close();
    await stopVm(src);
    await stopVm(dst);
    Deno.removeSync(dir, { recursive: true });
  }
});
