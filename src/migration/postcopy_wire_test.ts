import assert from "node:assert/strict";
import {
  decodeDirtyBitmaps,
  decodePageRequest,
  encodeDirtyBitmaps,
  encodePageRequest,
  MAX_REQUEST_PAGES,
} from "./postcopy_wire.ts";

Deno.test("encodeDirtyBitmaps round-trips through decodeDirtyBitmaps for this VM's regions", () => {
  const bitmaps = [new Uint32Array([0x80000001, 0, 0x5]), new Uint32Array([0xffffffff])];
  const out = decodeDirtyBitmaps(encodeDirtyBitmaps(bitmaps), [67, 32]);
  assert.deepEqual(out, bitmaps);
});

Deno.test("decodeDirtyBitmaps refuses another region layout, bits past a region's end, truncation and trailing bytes", () => {
  const b = encodeDirtyBitmaps([new Uint32Array([1, 1])]);
  assert.throws(() => decodeDirtyBitmaps(b, [64, 64]), /2 RAM regions|1 RAM regions/);
  assert.throws(() => decodeDirtyBitmaps(b, [96]), /must have 3 words/);
  assert.throws(
    () => decodeDirtyBitmaps(encodeDirtyBitmaps([new Uint32Array([1, 2])]), [33]),
    /bits past its end/,
  );
  assert.throws(() => decodeDirtyBitmaps(b.subarray(0, b.length - 1), [64]), /truncated/);
  assert.throws(() => decodeDirtyBitmaps(new Uint8Array([...b, 0]), [64]), /trailing bytes/);
  assert.throws(() => decodeDirtyBitmaps(new Uint8Array(2), [64]), /too short/);
});

Deno.test("decodePageRequest accepts what encodePageRequest wrote and refuses bad counts, misaligned addresses and lengths", () => {
  assert.deepEqual(decodePageRequest(encodePageRequest(0x1234000, 3)), { gpa: 0x1234000, pageCount: 3 });
  assert.throws(() => decodePageRequest(encodePageRequest(0x1000, 0)), /for 0 pages/);
  assert.throws(() => decodePageRequest(encodePageRequest(0x1000, MAX_REQUEST_PAGES + 1)), /pages/);
  assert.throws(() => decodePageRequest(encodePageRequest(0x1001, 1)), /at gpa 0x1001/);
  assert.throws(() => decodePageRequest(new Uint8Array(15)), /of 15 bytes/);
});
