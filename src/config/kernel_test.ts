import assert from "node:assert/strict";
import { parseKernel } from "./kernel.ts";
import { assertConfigError } from "./_testing.ts";

Deno.test("parseKernel joins -append values with spaces", () => {
  assert.deepEqual(parseKernel("vmlinux", ["console=ttyS0", "root=/dev/vda"], undefined), {
    path: "vmlinux",
    cmdline: "console=ttyS0 root=/dev/vda",
  });
  assert.deepEqual(parseKernel("vmlinux", [], "initrd.img"), {
    path: "vmlinux",
    cmdline: "",
    initrd: "initrd.img",
  });
  assert.equal(parseKernel(undefined, [], undefined), undefined);
});

Deno.test("parseKernel refuses -append or -initrd without -kernel and an empty path", () => {
  assertConfigError(
    () => parseKernel(undefined, ["quiet"], undefined),
    TypeError,
    "-append",
    /without -kernel/,
  );
  assertConfigError(() => parseKernel(undefined, [], "i.img"), TypeError, "-initrd", /without -kernel/);
  assertConfigError(() => parseKernel("", [], undefined), TypeError, "-kernel", /Missing value/);
});
