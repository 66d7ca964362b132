import assert from "node:assert/strict";
import { isBundled, workerUrl } from "./bundled.ts";

Deno.test("workerUrl() resolves beside the source module, or to the entry's bundle beside a bundle", () => {
  const src = "file:///r/src/machine/vm.ts";
  assert.equal(isBundled(src), false);
  assert.equal(workerUrl("./vcpu_worker.ts", src).href, "file:///r/src/machine/vcpu_worker.ts");
  const bundle = "file:///r/zig-out/js/ferry.js";
  assert.equal(isBundled(bundle), true);
  assert.equal(workerUrl("./vcpu_worker.ts", bundle).href, "file:///r/zig-out/js/vcpu_worker.js");
  assert.equal(workerUrl("../virtio/io_worker.ts", bundle).href, "file:///r/zig-out/js/io_worker.js");
});
