import assert from "node:assert/strict";
import { FakeVm } from "./_fake_vm.ts";
import {
  compareDigests,
  crc32c,
  decodeDigest,
  encodeDigest,
  MigrationDigest,
  ZERO_PAGE_CRC,
} from "./digest.ts";
import { ProtocolError } from "./stream.ts";

Deno.test("crc32c() gives the standard check value and continues a previous result", () => {
  const b = new TextEncoder().encode("123456789");
  assert.equal(crc32c(b), 0xe3069283);
  assert.equal(crc32c(b.subarray(5), crc32c(b.subarray(0, 5))), 0xe3069283);
  assert.equal(crc32c(new Uint8Array(4096)), ZERO_PAGE_CRC);
});

Deno.test("MigrationDigest of the same runs over the same bytes is equal, and one flipped bit differs", () => {
  const regions = [{ gpa: 0, sizeBytes: 8 * 4096 }];
  const runs = [{ gpa: 0, pageCount: 2, zero: true }, { gpa: 2 * 4096, pageCount: 6, zero: false }];
  const digestOf = (flip: boolean) => {
    const vm = new FakeVm({ regions });
    vm.memory.regions[0]!.bytes.fill(7, 2 * 4096);
    if (flip) vm.memory.regions[0]!.bytes[5 * 4096 + 17]! ^= 1;
    const d = new MigrationDigest(vm.memory);
    d.recordRuns(runs);
    d.recordSection(new Uint8Array([1, 2, 3]));
    return d.finish();
  };
  const a = digestOf(false);
  assert.deepEqual(a, digestOf(false));
  assert.equal(a.pages, 8);
  assert.equal(a.sections, 1);
  assert.equal(compareDigests(a, digestOf(false)), undefined);
  assert.match(compareDigests(a, digestOf(true))!, /guest RAM differs from the source's/);
  assert.match(compareDigests(a, { ...a, state: a.state ^ 1 })!, /device and vCPU state differs/);
});

Deno.test("MigrationDigest counts a page that was never recorded as different", () => {
  const vm = new FakeVm({ regions: [{ gpa: 0, sizeBytes: 4 * 4096 }] });
  const full = new MigrationDigest(vm.memory);
  full.recordRuns([{ gpa: 0, pageCount: 4, zero: true }]);
  const partial = new MigrationDigest(vm.memory);
  partial.recordRuns([{ gpa: 0, pageCount: 3, zero: true }]);
  assert.match(compareDigests(full.finish(), partial.finish())!, /guest RAM differs/);
});

Deno.test("encodeDigest() and decodeDigest() round-trip; a bad length or algorithm is refused", () => {
  const d = { ram: 0x12345678, state: 0x9abcdef0, pages: 65536, sections: 12 };
  assert.deepEqual(decodeDigest(encodeDigest(d)), d);
  assert.throws(() => decodeDigest(new Uint8Array(23)), ProtocolError);
  const bad = encodeDigest(d);
  bad[0] = 2;
  assert.throws(() => decodeDigest(bad), /unknown algorithm 2/);
});
