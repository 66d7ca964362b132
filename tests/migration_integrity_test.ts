/**
 * Black box: a proxy between a real source and a real destination flips one bit of one RAM page
 * on the wire. As it arrives, the message's CRC32C refuses it (wire protocol 2); flipped and
 * resealed with a matching CRC (a forger's stream), the end-to-end digest at switch-over refuses
 * it. Either way the destination refuses before the guest runs, with one line naming why, and the
 * source rolls back and keeps running.
 */
import assert from "node:assert/strict";
import {
  HEADER_BYTES,
  MessageKind,
  RAM_PREFIX_BYTES,
  RUN_BYTES,
  sealMessage,
} from "../src/migration/stream.ts";
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

const CASES = [
  {
    name: "a single flipped bit in a RAM page on the wire is refused by its CRC32C",
    reseal: false,
    source: /Cannot accept migration message #\d+ \('ram'\) at stream offset \d+: CRC32C mismatch/,
  },
  {
    name:
      "a flipped bit in a RAM page resealed with a matching CRC32C is refused at switch-over by the digest",
    reseal: true,
    source: /Cannot verify the switch-over digest: guest RAM differs from the source's/,
  },
];

for (const c of CASES) {
  Deno.test(`${c.name}, and the source keeps running`, async () => {
    const dir = tempDir();
    let src: Vm | undefined;
    let dst: Vm | undefined;
    const tap = { flipped: false };
    const proxy = startTap(`${dir}/tap.sock`, `${dir}/dst.sock`, (_i, kind, m, next) => {
      // The last RAM message, sent while the source is paused (the pattern guest rewrites all its
      // pages all the time, so earlier copies are sent again): flip one bit in its page bytes.
      if (tap.flipped || kind !== MessageKind.ram || next !== MessageKind.state) return m;
      const v = new DataView(m.buffer, m.byteOffset);
      const bytesStart = HEADER_BYTES + RAM_PREFIX_BYTES + v.getUint32(HEADER_BYTES, true) * RUN_BYTES;
      if (m.length <= bytesStart) return m;
      tap.flipped = true;
      const out = m.slice();
      out[bytesStart + Math.floor((m.length - bytesStart) / 2)]! ^= 0x04;
      return c.reseal ? sealMessage(out) : out;
    });
    try {
      src = await startVm({ dir, name: "src", append: APPEND, mem: "128M" });
      dst = await startVm({
        dir,
        name: "dst",
        append: APPEND,
        mem: "128M",
        incoming: `unix:${dir}/dst.sock`,
      });
      await waitIncoming(dst.qmp);
      await src.ferry.waitLine(/PROBE VERIFY ok round=/);
      await src.qmp.call("migrate", { uri: proxy.uri });
      const r = await waitMigration(src.qmp, FINAL, 60000);
      assert.ok(tap.flipped, "the proxy flipped a bit");
      assert.equal(r.status, "failed", JSON.stringify(r));
      assert.match(String(r["error-desc"]), c.source, String(r["error-desc"]));
      assert.equal(await runState(src.qmp), "running");
      await assertGuestRuns(src.ferry, "source after the refused migration");
      const st = await dst.ferry.wait(15000);
      assert.notEqual(st.code, 0);
      assert.ok(
        dst.ferry.stderrLines.some((l) => c.source.test(l)),
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
}
