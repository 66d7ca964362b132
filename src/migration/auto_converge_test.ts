import assert from "node:assert/strict";
import { AutoConverge } from "./auto_converge.ts";
import { DEFAULT_MIGRATION_PARAMETERS, updateMigrationParameters } from "./parameters.ts";

const MiB = 1024 * 1024;
const P = DEFAULT_MIGRATION_PARAMETERS;

Deno.test("AutoConverge starts at cpu-throttle-initial, steps by cpu-throttle-increment and stops at max-cpu-throttle", () => {
  const ac = new AutoConverge();
  const steps = [];
  for (let i = 0; i < 12; i++) steps.push(ac.afterSync(32 * MiB, 30 * MiB, P));
  assert.deepEqual(steps, [20, 30, 40, 50, 60, 70, 80, 90, 99, 99, 99, 99]);
});

Deno.test("AutoConverge keeps the throttle when the pass dirtied no more than throttle-trigger-threshold of what it sent", () => {
  const ac = new AutoConverge();
  assert.equal(ac.afterSync(15 * MiB, 30 * MiB, P), 0, "50 % exactly does not trigger");
  assert.equal(ac.afterSync(16 * MiB, 30 * MiB, P), 20);
  assert.equal(ac.afterSync(1 * MiB, 30 * MiB, P), 20, "a shrinking pass keeps the throttle");
  const p = updateMigrationParameters(P, { "throttle-trigger-threshold": 80 });
  assert.equal(ac.afterSync(20 * MiB, 30 * MiB, p), 20, "67 % is under an 80 % threshold");
  assert.equal(ac.afterSync(25 * MiB, 30 * MiB, p), 30);
});

Deno.test("AutoConverge follows changed parameters at the next step and clamps a lowered max-cpu-throttle at once", () => {
  const ac = new AutoConverge();
  const p = updateMigrationParameters(P, { "cpu-throttle-initial": 50, "cpu-throttle-increment": 25 });
  assert.equal(ac.afterSync(10 * MiB, MiB, p), 50);
  assert.equal(ac.afterSync(10 * MiB, MiB, p), 75);
  assert.equal(ac.clamp(updateMigrationParameters(p, { "max-cpu-throttle": 60 })), 60);
  assert.equal(ac.percentage, 60);
  ac.reset();
  assert.equal(ac.percentage, 0);
});

Deno.test("AutoConverge with cpu-throttle-tailslow steps only as far as the dirty ratio needs", () => {
  const ac = new AutoConverge();
  const p = updateMigrationParameters(P, { "cpu-throttle-tailslow": true, "cpu-throttle-increment": 20 });
  assert.equal(ac.afterSync(100 * MiB, 100 * MiB, p), 20);
  // Threshold 50 of 100 MiB sent = 50 MiB; 52 MiB dirtied: the guest may keep 80 × 50/52 = 76 %.
  assert.equal(ac.afterSync(52 * MiB, 100 * MiB, p), 24);
  // Far off: the full increment.
  assert.equal(ac.afterSync(400 * MiB, 100 * MiB, p), 44);
});

Deno.test("updateMigrationParameters checks the throttle parameters", () => {
  assert.throws(() => updateMigrationParameters(P, { "cpu-throttle-initial": 0 }), /outside 1\.\.99/);
  assert.throws(() => updateMigrationParameters(P, { "max-cpu-throttle": 100 }), /outside 1\.\.99/);
  assert.throws(() => updateMigrationParameters(P, { "cpu-throttle-tailslow": 1 }), /not a boolean/);
  assert.equal(
    updateMigrationParameters(P, { "throttle-trigger-threshold": 100 })["throttle-trigger-threshold"],
    100,
  );
});
