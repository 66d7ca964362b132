import assert from "node:assert/strict";
import {
  DEFAULT_MIGRATION_CAPABILITIES,
  DEFAULT_MIGRATION_PARAMETERS,
  listMigrationCapabilities,
  updateMigrationCapabilities,
  updateMigrationParameters,
} from "./parameters.ts";

Deno.test("updateMigrationParameters applies valid values and keeps the rest", () => {
  const p = updateMigrationParameters(DEFAULT_MIGRATION_PARAMETERS, {
    "downtime-limit": 50,
    "convergence-policy": "force",
  });
  assert.deepEqual(p, {
    ...DEFAULT_MIGRATION_PARAMETERS,
    "downtime-limit": 50,
    "convergence-policy": "force",
  });
  assert.equal(DEFAULT_MIGRATION_PARAMETERS["downtime-limit"], 300);
  assert.equal(DEFAULT_MIGRATION_PARAMETERS["max-bandwidth"], 0);
});

Deno.test("updateMigrationParameters rejects unknown names, wrong types and ranges, naming the parameter", () => {
  assert.throws(
    () => updateMigrationParameters(DEFAULT_MIGRATION_PARAMETERS, { "x-foo": 1 }),
    /'x-foo': no such parameter/,
  );
  assert.throws(
    () => updateMigrationParameters(DEFAULT_MIGRATION_PARAMETERS, { "downtime-limit": "1" }),
    TypeError,
  );
  assert.throws(
    () => updateMigrationParameters(DEFAULT_MIGRATION_PARAMETERS, { "max-bandwidth": -1 }),
    RangeError,
  );
  assert.throws(
    () => updateMigrationParameters(DEFAULT_MIGRATION_PARAMETERS, { "max-iterations": 0 }),
    /outside 1\.\.100000/,
  );
  assert.throws(
    () => updateMigrationParameters(DEFAULT_MIGRATION_PARAMETERS, { "convergence-policy": "maybe" }),
    /force or cancel/,
  );
});

Deno.test("updateMigrationCapabilities applies known capabilities all or nothing and names an unknown one", () => {
  const c = DEFAULT_MIGRATION_CAPABILITIES;
  assert.equal(c["auto-converge"], true);
  assert.deepEqual(updateMigrationCapabilities(c, [{ capability: "auto-converge", state: false }]), {
    "auto-converge": false,
    "postcopy-ram": false,
    "postcopy-blocktime": false,
    multifd: false,
    "zero-copy-send": true,
  });
  assert.equal(updateMigrationCapabilities(c, [{ capability: "multifd", state: true }]).multifd, true);
  assert.throws(
    () =>
      updateMigrationCapabilities(c, [{ capability: "auto-converge", state: false }, {
        capability: "xbzrle",
        state: true,
      }]),
    /^TypeError: Cannot set migration capability 'xbzrle': no such capability$/,
  );
  assert.throws(
    () => updateMigrationCapabilities(c, [{ capability: "auto-converge", state: 1 }]),
    /must be a boolean/,
  );
  assert.deepEqual(listMigrationCapabilities(c), [
    { capability: "auto-converge", state: true },
    { capability: "postcopy-ram", state: false },
    { capability: "postcopy-blocktime", state: false },
    { capability: "multifd", state: false },
    { capability: "zero-copy-send", state: true },
  ]);
});
