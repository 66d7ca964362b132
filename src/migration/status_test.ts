import assert from "node:assert/strict";
import { MIGRATION_TRANSITIONS, type MigrationStatus, MigrationStatusTracker } from "./status.ts";

Deno.test("MigrationStatusTracker follows the transition table and notifies listeners", () => {
  const t = new MigrationStatusTracker();
  const seen: [MigrationStatus, string | undefined][] = [];
  const off = t.onChange((s, e) => seen.push([s, e]));
  assert.equal(t.status, "none");
  assert.deepEqual(t.queryMigrate(), { status: "none" });
  t.transition("setup");
  assert.equal(t.isActive, true);
  t.transition("active");
  t.transition("failed", "Cannot connect");
  assert.equal(t.isActive, false);
  assert.deepEqual(t.queryMigrate(), { status: "failed", "error-desc": "Cannot connect" });
  t.transition("setup");
  assert.equal(t.errorDesc, undefined);
  off();
  t.transition("canceled");
  assert.deepEqual(seen, [["setup", undefined], ["active", undefined], ["failed", "Cannot connect"], [
    "setup",
    undefined,
  ]]);
});

Deno.test("MigrationStatusTracker throws on every transition outside the table", () => {
  const all: MigrationStatus[] = [
    "none",
    "setup",
    "active",
    "postcopy-active",
    "postcopy-paused",
    "completed",
    "failed",
    "canceled",
  ];
  const paths: Record<MigrationStatus, MigrationStatus[]> = {
    none: [],
    setup: ["setup"],
    active: ["setup", "active"],
    "postcopy-active": ["setup", "active", "postcopy-active"],
    "postcopy-paused": ["setup", "active", "postcopy-active", "postcopy-paused"],
    completed: ["setup", "active", "completed"],
    failed: ["setup", "failed"],
    canceled: ["setup", "canceled"],
  };
  for (const from of all) {
    for (const to of all) {
      const t = new MigrationStatusTracker();
      for (const s of paths[from]) t.transition(s);
      if (MIGRATION_TRANSITIONS[from].includes(to)) t.transition(to);
      else {
        assert.throws(
          () => t.transition(to),
          new RegExp(`Cannot change migration status from '${from}' to '${to}'`),
        );
        assert.equal(t.status, from);
      }
    }
  }
});

Deno.test("MigrationStatusTracker: post-copy cannot be canceled or go back, and postcopy-paused keeps its reason and stays active", () => {
  const t = new MigrationStatusTracker();
  t.transition("setup");
  t.transition("active");
  t.transition("postcopy-active");
  assert.equal(t.isActive, true);
  assert.throws(() => t.transition("canceled"), /from 'postcopy-active' to 'canceled'/);
  assert.throws(() => t.transition("active"), /from 'postcopy-active' to 'active'/);
  t.transition("postcopy-paused", "lost the source");
  assert.equal(t.isActive, true, "a paused post-copy still holds the guest: migrate, cont are refused");
  assert.deepEqual(t.queryMigrate(), { status: "postcopy-paused", "error-desc": "lost the source" });
  assert.throws(() => t.transition("setup"), /from 'postcopy-paused' to 'setup'/);
});

Deno.test("MigrationStatusTracker survives a throwing listener and merges attached info", () => {
  const t = new MigrationStatusTracker();
  t.onChange(() => {
    throw new Error("listener bug");
  });
  t.transition("setup");
  t.attachInfo(() => ({ "total-time": 5 }));
  assert.deepEqual(t.queryMigrate(), { status: "setup", "total-time": 5 });
});
