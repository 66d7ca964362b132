import assert from "node:assert/strict";
import { MessageReader, MessageWriter } from "./stream.ts";
import {
  decodeEndRecord,
  encodeEndRecord,
  END_RECORD_BYTES,
  partialPath,
  SnapshotFileError,
  SnapshotFileSink,
  SnapshotFileSource,
} from "./snapshot_file.ts";

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

async function writeSnapshot(path: string, payloads: Uint8Array[]): Promise<void> {
  const sink = await SnapshotFileSink.create(path);
  const w = new MessageWriter(sink);
  for (const p of payloads) await w.send("config", p);
  assert.ok(exists(partialPath(path)) && !exists(path), "written under the partial name");
  await sink.commit();
  sink.close();
}

async function readAll(path: string): Promise<Uint8Array[]> {
  const src = await SnapshotFileSource.open(path);
  try {
    const r = new MessageReader(src, "snapshot");
    const out: Uint8Array[] = [];
    for (let h = await r.readHeader(); h; h = await r.readHeader()) out.push(await r.readPayload(h, 1 << 20));
    return out;
  } finally {
    src.close();
  }
}

Deno.test("a committed snapshot file reads back message for message and ends at its end record", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    const payloads = [new Uint8Array([1, 2, 3]), new Uint8Array(100_000).fill(7), new Uint8Array(0)];
    await writeSnapshot(`${dir}/s`, payloads);
    assert.ok(!exists(partialPath(`${dir}/s`)));
    assert.deepEqual(await readAll(`${dir}/s`), payloads);
    const src = await SnapshotFileSource.open(`${dir}/s`);
    assert.equal(src.length, Deno.statSync(`${dir}/s`).size - END_RECORD_BYTES);
    await assert.rejects(() => src.write(new Uint8Array(1)), /no peer/);
    src.close();
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("closing an uncommitted snapshot removes the partial file and leaves no final file", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    const sink = await SnapshotFileSink.create(`${dir}/s`);
    await new MessageWriter(sink).send("config", new Uint8Array(10));
    sink.close();
    assert.deepEqual([...Deno.readDirSync(dir)], []);
    await assert.rejects(() => SnapshotFileSink.create(`${dir}/missing/s`), /Cannot create snapshot file/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a truncated file, a flipped byte anywhere and a bad end record are refused", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    await writeSnapshot(`${dir}/s`, [new Uint8Array(5000).fill(3), new Uint8Array([9])]);
    const good = Deno.readFileSync(`${dir}/s`);
    for (const cut of [0, 10, good.length / 2, good.length - 1]) {
      Deno.writeFileSync(`${dir}/t`, good.subarray(0, Math.floor(cut)));
      await assert.rejects(
        () => readAll(`${dir}/t`),
        (e: Error) => e instanceof SnapshotFileError && /truncated/.test(e.message),
        `cut at ${cut}`,
      );
    }
    for (let at = 0; at < good.length; at += 97) {
      const bad = good.slice();
      bad[at]! ^= 0x10;
      Deno.writeFileSync(`${dir}/f`, bad);
      await assert.rejects(() => readAll(`${dir}/f`), Error, `flip at ${at}`);
    }
    // A flip in a payload byte the framing does not check is caught by the CRC at the end.
    const bad = good.slice();
    bad[24 + 100]! ^= 1;
    Deno.writeFileSync(`${dir}/f`, bad);
    await assert.rejects(() => readAll(`${dir}/f`), /the file is corrupted: CRC32C of its \d+ bytes/);
    // The corruption check after a failure reads the rest and names the damage.
    const src = await SnapshotFileSource.open(`${dir}/f`);
    assert.match((await src.corruption())!, /corrupted/);
    src.close();
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("the end record round-trips and must count the bytes before it", () => {
  const r = encodeEndRecord(1000, 0xdeadbeef);
  assert.deepEqual(decodeEndRecord(r, 1000 + END_RECORD_BYTES), { length: 1000, crc: 0xdeadbeef });
  assert.throws(() => decodeEndRecord(r, 999 + END_RECORD_BYTES), /end record counts 1000 bytes/);
  const z = r.slice();
  z[0] = 0;
  assert.throws(() => decodeEndRecord(z, 1000 + END_RECORD_BYTES), /truncated or not a ferry snapshot/);
});
