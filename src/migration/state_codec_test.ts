import assert from "node:assert/strict";
import { decodeState, encodeState } from "./state_codec.ts";
import type { StateValue } from "../devices/device.ts";

Deno.test("encodeState round-trips every StateValue type exactly", () => {
  const v: StateValue = {
    i: 42,
    neg: -7,
    big: 2n ** 64n - 1n,
    over53: 2n ** 53n + 1n,
    small: 5n,
    negBig: -(2n ** 63n),
    zero: 0n,
    f: 1.5,
    negZero: -0,
    nan: NaN,
    large: 2 ** 40,
    s: "ttyS0 ✓",
    t: true,
    n: null,
    bytes: new Uint8Array([0, 255, 7]),
    empty: new Uint8Array(0),
    arr: [1, "a", [new Uint8Array([1])], { deep: 1n }],
    ["__proto__"]: { still: "data" },
  };
  const d = decodeState(encodeState(v)) as Record<string, StateValue>;
  assert.deepEqual(d, v);
  assert.equal(typeof d.small, "bigint");
  assert.equal(typeof d.i, "number");
  assert.ok(Object.is(d.negZero, -0));
  assert.ok(d.bytes instanceof Uint8Array);
  assert.equal(Object.getPrototypeOf(d), Object.prototype);
  assert.ok(Object.hasOwn(d, "__proto__"));
});

Deno.test("encodeState rejects values that are not plain data, naming the path", () => {
  assert.throws(() => encodeState({ a: [undefined as unknown as StateValue] }), /at \$\.a\[0\]: undefined/);
  assert.throws(
    () => encodeState({ m: new Map() as unknown as StateValue }),
    /at \$\.m: Map is not plain data/,
  );
  const cyc: Record<string, StateValue> = {};
  cyc.self = cyc;
  assert.throws(() => encodeState(cyc), /nested deeper than 64/);
});

Deno.test("decodeState rejects garbage with a SyntaxError, never anything else", () => {
  const good = encodeState({ a: [1, 2n, "x", new Uint8Array(4)] });
  for (let cut = 0; cut < good.length; cut++) {
    assert.throws(() => decodeState(good.subarray(0, cut)), SyntaxError);
  }
  assert.throws(() => decodeState(Uint8Array.of(1, 8, 0xff, 0xff, 0xff, 0xff)), /needs 4294967295 bytes/);
  assert.throws(() => decodeState(Uint8Array.of(2, 0)), /codec version 2/);
  assert.throws(() => decodeState(Uint8Array.of(1, 0x42)), /unknown tag 0x42/);
  assert.throws(() => decodeState(Uint8Array.of(1, 0, 0)), /1 trailing bytes/);
  assert.throws(() => decodeState(Uint8Array.of(1, 6, 2, 0, 0, 0, 0xc3, 0x28)), /not valid UTF-8/);
  const dup = Uint8Array.of(1, 9, 2, 0, 0, 0, 1, 0, 0, 0, 0x61, 0, 1, 0, 0, 0, 0x61, 0);
  assert.throws(() => decodeState(dup), /duplicate key 'a'/);
  const deep = new Uint8Array(2 + 200 * 5);
  deep[0] = 1;
  for (let i = 0; i < 200; i++) deep.set([8, 1, 0, 0, 0], 1 + i * 5);
  assert.throws(() => decodeState(deep), /nested deeper than 64/);
  let seed = 1;
  for (let i = 0; i < 2000; i++) {
    const b = new Uint8Array(1 + (i % 64)).map(() =>
      (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) & 0xff
    );
    b[0] = 1;
    try {
      decodeState(b);
    } catch (e) {
      assert.ok(e instanceof SyntaxError, `garbage ${i}: ${e}`);
    }
  }
});
