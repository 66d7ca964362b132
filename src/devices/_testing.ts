/**
 * Test helpers shared by device tests. {@linkcode assertMigratable} is the one conformance check for
 * every migratable thing (STYLE.md c.13, crosvm's `suspendable_tests!`).
 * @module
 */
import assert from "node:assert/strict";
import type { Migratable, StateValue } from "./device.ts";

/** Options for {@linkcode assertMigratable}. */
export interface AssertMigratableOptions<T extends Migratable> {
  /** Builds a fresh device in its reset state. Inject fake clocks here so saves are repeatable. */
  make: () => T;
  /** Drives the device into a state that differs from reset in as many fields as practical. */
  mutate: (device: T) => void;
  /** A payload as version `minStateVersion` wrote it; without it the current save is used at that version. */
  minVersionPayload?: StateValue;
  /** Device-specific invalid payload fields, each of which must be rejected naming the field. */
  invalid?: Array<{ field: string; value: StateValue }>;
}

function isRecord(v: StateValue): v is { [key: string]: StateValue } {
  return v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof Uint8Array);
}

/** Wrong-type and out-of-range replacements for one field's value. */
function badValues(v: StateValue): StateValue[] {
  if (typeof v === "number") return ["1", 2 ** 53, -(2 ** 53), Number.NaN];
  if (typeof v === "boolean") return [0, "true"];
  if (v instanceof Uint8Array) return [[...v], new Uint8Array(v.length + 65536)];
  if (typeof v === "string") return [1];
  return ["x"];
}

function assertRejects(device: Migratable, payload: StateValue, version: number, field: string): void {
  assert.throws(
    () => device.restore(payload, version),
    (e: unknown) => {
      assert.ok(e instanceof TypeError || e instanceof RangeError, `expected TypeError/RangeError, got ${e}`);
      assert.match(
        e.message,
        new RegExp(`^Cannot restore ${device.id.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: `),
      );
      assert.ok(e.message.includes(field), `message should name '${field}': ${e.message}`);
      return true;
    },
    `restore should reject ${field}`,
  );
}

/**
 * Checks a device's save/restore contract:
 * - save → restore into a fresh instance → save again is deep-equal, before and after `mutate()`;
 * - the state after `mutate()` differs from the reset state;
 * - a payload at `minStateVersion` still restores;
 * - a missing field, a field of the wrong type and an out-of-range value are each rejected with a
 *   `TypeError`/`RangeError` whose message names the device and the field, and so are versions
 *   outside `minStateVersion..stateVersion` and a payload that is not an object.
 */
export function assertMigratable<T extends Migratable>(options: AssertMigratableOptions<T>): void {
  const a = options.make();
  const reset = a.save();
  options.mutate(a);
  const mutated = a.save();
  assert.notDeepStrictEqual(mutated, reset, "mutate() should change the saved state");

  for (const state of [reset, mutated]) {
    const b = options.make();
    b.restore(state, a.stateVersion);
    assert.deepStrictEqual(b.save(), state, "save → restore → save should round-trip");
  }

  const old = options.make();
  old.restore(options.minVersionPayload ?? mutated, a.minStateVersion);

  const fresh = options.make();
  assertRejects(fresh, mutated, a.stateVersion + 1, "version");
  assertRejects(fresh, mutated, a.minStateVersion - 1, "version");
  assertRejects(fresh, null, a.stateVersion, "state");
  assertRejects(fresh, [], a.stateVersion, "state");
  assert.ok(isRecord(mutated), "save() should return a plain object");
  for (const [field, value] of Object.entries(mutated)) {
    const { [field]: _, ...missing } = mutated;
    assertRejects(fresh, missing, a.stateVersion, `'${field}'`);
    for (const bad of badValues(value)) {
      assertRejects(fresh, { ...mutated, [field]: bad }, a.stateVersion, `'${field}'`);
    }
  }
  for (const { field, value } of options.invalid ?? []) {
    assertRejects(fresh, { ...mutated, [field]: value }, a.stateVersion, `'${field}'`);
  }
  assert.deepStrictEqual(
    fresh.save(),
    options.make().save(),
    "rejected payloads must leave the device unchanged",
  );
}
