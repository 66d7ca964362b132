import assert from "node:assert/strict";
import { throttleSleepMs, type ThrottleTarget, VcpuThrottle } from "./vcpu_throttle.ts";

Deno.test("throttleSleepMs gives QEMU's sleep per 10 ms run slice", () => {
  assert.equal(throttleSleepMs(0), 0);
  assert.equal(throttleSleepMs(20), 2.5);
  assert.equal(throttleSleepMs(50), 10);
  assert.ok(Math.abs(throttleSleepMs(99) - 990) < 1e-9);
  assert.ok(Math.abs(throttleSleepMs(150) - 990) < 1e-9, "clamped to 99 %");
});

/** A fake vCPU pause/kick primitive that records what the throttle does. */
class FakeVcpus implements ThrottleTarget {
  paused = false;
  pauses = 0;
  failPause = false;
  async pause(): Promise<void> {
    await Promise.resolve();
    if (this.failPause) throw new Error("no answer in 5000 ms");
    this.paused = true;
    this.pauses++;
  }
  resume(): void {
    this.paused = false;
  }
}

async function until(what: string, cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

Deno.test("VcpuThrottle pauses the vCPUs period after period and stop() leaves them running", async () => {
  const v = new FakeVcpus();
  const t = new VcpuThrottle(v, { timesliceMs: 2 });
  t.set(90);
  assert.equal(t.percentage, 90);
  await until("the vCPUs paused twice", () => v.pauses >= 2);
  await until("a throttle sleep", () => v.paused);
  await t.stop(); // cuts the 18 ms sleep short
  assert.equal(t.percentage, 0);
  assert.equal(v.paused, false, "running after stop");
  const n = v.pauses;
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(v.pauses, n, "no pause after stop");
});

Deno.test("VcpuThrottle clamps to 99 % and set(0) turns it off", async () => {
  const v = new FakeVcpus();
  const t = new VcpuThrottle(v, { timesliceMs: 1 });
  t.set(250);
  assert.equal(t.percentage, 99);
  await until("a pause", () => v.pauses >= 1);
  t.set(0);
  await t.stop();
  assert.equal(v.paused, false);
});

Deno.test("VcpuThrottle gives up and leaves the vCPUs running when they cannot be paused", async () => {
  const v = new FakeVcpus();
  v.failPause = true;
  const t = new VcpuThrottle(v, { timesliceMs: 1 });
  t.set(50);
  await until("the throttle to give up", () => t.percentage === 0);
  await t.stop();
  assert.equal(v.paused, false);
});
