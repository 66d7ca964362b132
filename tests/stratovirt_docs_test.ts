/**
 * Black box: the command lines of StratoVirt's own live-migration guide (`docs/migration.md` in
 * openeuler-mirror/stratovirt), word for word, with only the binary (ferry for `./stratovirt`) and
 * the kernel (the probe guest for `./vmlinux.bin`) swapped. The guide's placeholders are filled in:
 * `path/to/…` become temp paths and its example host `192.168.0.1:4446` becomes 127.0.0.1 on a free
 * port, since that address is not on this machine.
 */
import assert from "node:assert/strict";
import { Ferry, PROBE, tempDir } from "./_fixture/ferry.ts";
import { freePort, waitMigration } from "./_fixture/migration.ts";
import type { QmpMessage } from "./_fixture/qmp_client.ts";

// Copied from StratoVirt's docs/migration.md ("Launch the source VM" / "Launch the destination VM").
const SOURCE = String.raw`./stratovirt \
    -machine q35 \
    -kernel ./vmlinux.bin \
    -append "console=ttyS0 pci=off reboot=k quiet panic=1 root=/dev/vda" \
    -drive file=path/to/rootfs,id=rootfs,readonly=off,direct=off \
    -device virtio-blk-pci,drive=rootfs,id=rootfs,bus=pcie.0,addr=0 \
    -qmp unix:path/to/socket1,server,nowait \
    -serial stdio \
`;
const DESTINATION = String.raw`./stratovirt \
    -machine q35 \
    -kernel ./vmlinux.bin \
    -append "console=ttyS0 pci=off reboot=k quiet panic=1 root=/dev/vda" \
    -drive file=path/to/rootfs,id=rootfs,readonly=off,direct=off \
    -device virtio-blk-pci,drive=rootfs,id=rootfs,bus=pcie.0,addr=0 \
    -qmp unix:path/to/socket2,server,nowait \
    -serial stdio \
    -incoming tcp:192.168.0.1:4446 \
`;

/** Splits the guide's shell text into words: backslash-newlines join, double quotes group. */
function shellWords(text: string): string[] {
  const words: string[] = [];
  for (const m of text.replace(/\\\n/g, " ").matchAll(/"([^"]*)"|(\S+)/g)) words.push(m[1] ?? m[2]!);
  return words;
}

/** The guide's words with the binary dropped, the kernel swapped and the placeholders filled in. */
function ferryArgs(text: string, fill: Record<string, string>): string[] {
  const [binary, ...args] = shellWords(text);
  assert.equal(binary, "./stratovirt");
  return args.map((a) => {
    let out = a === "./vmlinux.bin" ? PROBE : a;
    for (const [from, to] of Object.entries(fill)) out = out.replaceAll(from, to);
    return out;
  });
}

Deno.test("StratoVirt's migration guide command lines boot and migrate under ferry, the addr=0 device moved with one notice", async () => {
  const dir = tempDir();
  const port = freePort();
  const fill = {
    "path/to/rootfs": `${dir}/rootfs`,
    "path/to/socket1": `${dir}/socket1`,
    "path/to/socket2": `${dir}/socket2`,
    "192.168.0.1:4446": `127.0.0.1:${port}`,
  };
  const disk = await Deno.open(`${dir}/rootfs`, { create: true, write: true });
  await disk.truncate(16 * 1024 * 1024);
  disk.close();
  const src = new Ferry(ferryArgs(SOURCE, fill), { qmpPath: `${dir}/socket1` });
  const dst = new Ferry(ferryArgs(DESTINATION, fill), { qmpPath: `${dir}/socket2` });
  try {
    const sq = await src.qmp();
    const dq = await dst.qmp();
    await src.waitLine(/PROBE PROGRESS cpu=0/);
    const notice = "ferry: -device virtio-blk-pci,id=rootfs: pcie.0 addr 0x0.0 is the q35 host bridge's; " +
      "placed at 0x1.0, the first free slot";
    for (const f of [src, dst]) {
      assert.deepEqual(f.stderrLines.filter((l) => l.includes("host bridge")), [notice], f.transcript());
    }
    assert.equal((await dq.call("query-status") as QmpMessage).status, "inmigrate");

    // The guide's QMP step: {"execute":"migrate", "arguments":{"uri":"tcp:192.168.0.1:4446"}}
    assert.deepEqual(await sq.execute("migrate", { uri: `tcp:127.0.0.1:${port}` }), { return: {} });
    const r = await waitMigration(sq, ["completed", "failed", "canceled"], 60000);
    assert.equal(r.status, "completed", JSON.stringify(r) + src.transcript() + dst.transcript());
    const from = dst.lines.length;
    await dst.waitLine(/PROBE PROGRESS cpu=0/, 20000, from);
    assert.equal((await dq.call("query-status") as QmpMessage).status, "running");
    assert.ok(!dst.lines.some((l) => /FAIL|PROBE BOOT/.test(l)), dst.transcript());
    await sq.close();
    await dq.close();
  } finally {
    await src.kill();
    await dst.kill();
    Deno.removeSync(dir, { recursive: true });
  }
});
