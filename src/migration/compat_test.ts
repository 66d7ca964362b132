import assert from "node:assert/strict";
import { checkCompatibility, ConfigMismatchError } from "./compat.ts";

const host = { "cpu vendor": "GenuineIntel", "kvm api version": "12" };

Deno.test("checkCompatibility names the first differing attribute with both values", () => {
  const e = assert.throws(
    () =>
      checkCompatibility({ config: { "-m": "256", "-smp": "2" }, host }, {
        config: { "-m": "256", "-smp": "4" },
        host,
      }),
    (e: unknown) => {
      assert.ok(e instanceof ConfigMismatchError);
      assert.equal(e.attribute, "-smp");
      assert.equal(e.source, "2");
      assert.equal(e.destination, "4");
      assert.equal(e.message, "-smp: source 2, destination 4");
      return true;
    },
  );
  void e;
});

Deno.test("checkCompatibility treats an attribute missing on either side as a mismatch", () => {
  assert.throws(
    () => checkCompatibility({ config: { "device rootfs: addr": "0x2.0" }, host }, { config: {}, host }),
    /^ConfigMismatchError: device rootfs: addr: source 0x2.0, destination \(absent\)$/,
  );
  assert.throws(
    () => checkCompatibility({ config: {}, host }, { config: { "-kernel": "a" }, host }),
    /-kernel: source \(absent\), destination a/,
  );
  assert.throws(
    () =>
      checkCompatibility({ config: {}, host }, {
        config: {},
        host: { ...host, "cpu vendor": "AuthenticAMD" },
      }),
    /cpu vendor: source GenuineIntel, destination AuthenticAMD/,
  );
  assert.throws(
    () => checkCompatibility({ config: {}, host }, { config: { "toString": "x" }, host }),
    /toString/,
  );
  checkCompatibility({ config: { "-m": "1" }, host }, { config: { "-m": "1" }, host: { ...host } });
});
