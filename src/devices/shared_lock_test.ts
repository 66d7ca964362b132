import assert from "node:assert/strict";
import { lockShared, unlockShared } from "./shared_lock.ts";

Deno.test("lockShared excludes other threads: no increment is lost across two Workers and main", async () => {
  const shared = new SharedArrayBuffer(8);
  const w = new Int32Array(shared);
  const n = 200_000;
  const workers = [0, 1].map(() =>
    new Worker(new URL("./_shared_lock_test_worker.ts", import.meta.url), { type: "module" })
  );
  const done = workers.map((wk) => new Promise((resolve) => (wk.onmessage = resolve)));
  for (const wk of workers) wk.postMessage({ shared, n });
  for (let i = 0; i < n; i++) {
    lockShared(w, 0);
    w[1] = w[1]! + 1;
    unlockShared(w, 0);
  }
  await Promise.all(done);
  assert.equal(w[1], 3 * n);
  assert.equal(w[0], 0, "the lock is free at the end");
});
