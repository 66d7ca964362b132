/**
 * Worker for shared_lock_test.ts: increments a plain (non-atomic) counter under the lock.
 * @module
 */
/// <reference lib="deno.worker" />
import { lockShared, unlockShared } from "./shared_lock.ts";

self.onmessage = (e: MessageEvent<{ shared: SharedArrayBuffer; n: number }>) => {
  const w = new Int32Array(e.data.shared);
  for (let i = 0; i < e.data.n; i++) {
    lockShared(w, 0);
    const v = w[1]!;
    w[1] = v + 1;
    unlockShared(w, 0);
  }
  self.postMessage("done");
  self.close();
};
