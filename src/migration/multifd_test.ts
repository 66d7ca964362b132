import assert from "node:assert/strict";
import {
  CHANNEL_BYTES,
  checkMultifd,
  decodeChannel,
  decodeSync,
  encodeChannel,
  encodeSync,
  MAIN_CHANNEL,
  multifdAttributes,
  multifdChannels,
} from "./multifd.ts";
import { DEFAULT_MIGRATION_CAPABILITIES, DEFAULT_MIGRATION_PARAMETERS } from "./parameters.ts";
import { ProtocolError } from "./stream.ts";

Deno.test("multifd channel and sync payloads round-trip and reject a wrong size", () => {
  const id = new Uint8Array(16).map((_, i) => i + 1);
  const b = encodeChannel({ id, index: MAIN_CHANNEL, count: 4 });
  assert.equal(b.length, CHANNEL_BYTES);
  assert.deepEqual(decodeChannel(b), { id, index: 0xffff, count: 4 });
  assert.throws(() => decodeChannel(b.subarray(1)), ProtocolError);
  assert.equal(decodeSync(encodeSync(7)), 7);
  assert.throws(() => decodeSync(new Uint8Array(3)), /need 4/);
});

Deno.test("multifd is off by default with QEMU's default of 2 channels; both sides must agree", () => {
  assert.equal(multifdChannels(DEFAULT_MIGRATION_CAPABILITIES, DEFAULT_MIGRATION_PARAMETERS), 0);
  assert.equal(
    multifdChannels({ ...DEFAULT_MIGRATION_CAPABILITIES, multifd: true }, DEFAULT_MIGRATION_PARAMETERS),
    2,
  );
  assert.deepEqual(multifdAttributes(0), {});
  // Same setting: accepted, and the attributes leave the config before the VM comparison.
  const on = { "-m": "1G", ...multifdAttributes(2) };
  checkMultifd(on, 2);
  assert.deepEqual(on, { "-m": "1G" });
  checkMultifd({ "-m": "1G" }, 0);
  assert.throws(
    () => checkMultifd({ ...multifdAttributes(2) }, 0),
    /capability multifd is on on the source and off on the destination/,
  );
  assert.throws(
    () => checkMultifd({}, 4),
    /capability multifd is off on the source and on on the destination/,
  );
  assert.throws(
    () => checkMultifd({ ...multifdAttributes(2) }, 4),
    /multifd-channels is 2 on the source and 4 on the destination/,
  );
});
