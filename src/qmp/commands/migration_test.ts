import assert from "node:assert/strict";
import { QmpServer } from "../server.ts";
import { FakeMigration, tempSocketPath, TestClient } from "../_testing.ts";
import { type MigrationControl, registerMigrationCommands } from "./migration.ts";

async function setup(migration: MigrationControl = new FakeMigration()) {
  const { dir, path } = await tempSocketPath();
  const server = new QmpServer({ path });
  registerMigrationCommands(server, migration);
  await server.listen();
  const { client } = await TestClient.open(path);
  return {
    server,
    client,
    async done() {
      client.close();
      await server.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("query-migrate returns {} before any migration, then the backend's status", async () => {
  const m = new FakeMigration();
  const t = await setup(m);
  try {
    assert.deepEqual(await t.client.execute("query-migrate"), { return: {} });
    assert.deepEqual(await t.client.execute("migrate", { uri: "tcp:127.0.0.1:4446" }, "m1"), {
      return: {},
      id: "m1",
    });
    await t.client.sendRaw('{"execute":"query-migrate"}\n');
    assert.equal(
      await t.client.readLine(),
      '{"return":{"status":"active","ram":{"transferred":1152921504606846977,"remaining":0,"total":1073741824}}}\r\n',
    );
    assert.deepEqual(m.calls, ["migrate tcp:127.0.0.1:4446"]);
  } finally {
    await t.done();
  }
});

Deno.test("migrate passes the backend's refusal through and accepts QEMU's flags", async () => {
  const m = new FakeMigration();
  const t = await setup(m);
  try {
    assert.deepEqual(await t.client.execute("migrate", { uri: "unix:/tmp/m.sock", detach: true }), {
      return: {},
    });
    assert.deepEqual(await t.client.execute("migrate", { uri: "unix:/tmp/m.sock" }), {
      error: { class: "GenericError", desc: "There's a migration process in progress" },
    });
    assert.deepEqual(await t.client.execute("migrate_cancel"), { return: {} });
    assert.deepEqual(await t.client.execute("query-migrate"), { return: { status: "canceled" } });
    assert.deepEqual(await t.client.execute("migrate", { uri: "x", blk: false, inc: false, resume: false }), {
      return: {},
    });
  } finally {
    await t.done();
  }
});

Deno.test("migrate refuses a missing uri, wrong types, block migration and resume", async () => {
  const m = new FakeMigration();
  const t = await setup(m);
  try {
    const cases: [Record<string, unknown>, string][] = [
      [{}, "Parameter 'uri' is missing"],
      [{ uri: 5 }, "Invalid parameter type for 'uri', expected: string"],
      [{ uri: "x", detach: "yes" }, "Invalid parameter type for 'detach', expected: boolean"],
      [{ uri: "x", speed: 1 }, "Parameter 'speed' is unexpected"],
      [
        { uri: "x", blk: true },
        "Cannot migrate with 'blk': ferry copies no disk contents, use shared storage",
      ],
      [
        { uri: "x", inc: true },
        "Cannot migrate with 'inc': ferry copies no disk contents, use shared storage",
      ],
      [{ uri: "x", resume: true }, "Cannot migrate with 'resume': ferry cannot recover a paused post-copy"],
    ];
    for (const [args, desc] of cases) {
      assert.deepEqual(await t.client.execute("migrate", args), { error: { class: "GenericError", desc } });
    }
    assert.deepEqual(m.calls, []);
  } finally {
    await t.done();
  }
});

Deno.test("migrate-set-parameters checks each parameter and passes only those given", async () => {
  const m = new FakeMigration();
  const t = await setup(m);
  try {
    assert.deepEqual(await t.client.execute("migrate-set-parameters", { "max-bandwidth": 10000000000 }), {
      return: {},
    });
    assert.deepEqual(
      await t.client.execute("migrate-set-parameters", {
        "downtime-limit": 500,
        "max-iterations": 10,
        "convergence-policy": "force",
      }),
      { return: {} },
    );
    assert.deepEqual(m.calls, [
      'set {"max-bandwidth":10000000000}',
      'set {"downtime-limit":500,"max-iterations":10,"convergence-policy":"force"}',
    ]);
    assert.deepEqual(await t.client.execute("query-migrate-parameters"), {
      return: {
        "downtime-limit": 500,
        "max-bandwidth": 10000000000,
        "max-iterations": 10,
        "convergence-policy": "force",
      },
    });
    const cases: [Record<string, unknown>, string][] = [
      [{ "downtime-limit": -1 }, "Parameter 'downtime-limit' expects a value from 0 to 2000000, got '-1'"],
      [
        { "downtime-limit": 2000001 },
        "Parameter 'downtime-limit' expects a value from 0 to 2000000, got '2000001'",
      ],
      [{ "downtime-limit": 1.5 }, "Parameter 'downtime-limit' expects uint64"],
      [{ "max-bandwidth": -5 }, "Parameter 'max-bandwidth' expects a non-negative value, got '-5'"],
      [{ "max-bandwidth": "fast" }, "Invalid parameter type for 'max-bandwidth', expected: integer"],
      [{ "max-iterations": 0 }, "Parameter 'max-iterations' expects a value of at least 1, got '0'"],
      [
        { "convergence-policy": "wait" },
        "Parameter 'convergence-policy' expects one of 'cancel', 'force', got 'wait'",
      ],
      [{ "compress-level": 1 }, "Parameter 'compress-level' is unexpected"],
    ];
    for (const [args, desc] of cases) {
      assert.deepEqual(await t.client.execute("migrate-set-parameters", args), {
        error: { class: "GenericError", desc },
      });
    }
    assert.equal(m.calls.length, 2);
  } finally {
    await t.done();
  }
});

Deno.test("migrate-incoming is registered only when the backend has incoming()", async () => {
  const m = new FakeMigration();
  const t = await setup(m);
  try {
    assert.deepEqual(await t.client.execute("migrate-incoming", { uri: "tcp:0:4446" }), { return: {} });
    assert.deepEqual(m.calls, ["incoming tcp:0:4446"]);
  } finally {
    await t.done();
  }
  const bare: MigrationControl = {
    migrate() {},
    cancel() {},
    query: () => ({}),
    setParameters() {},
    parameters: () => ({}),
  };
  const u = await setup(bare);
  try {
    assert.equal(
      (await u.client.execute("migrate-incoming", { uri: "x" }) as { error: { class: string } }).error.class,
      "CommandNotFound",
    );
    const names = ((await u.client.execute("query-commands")).return as { name: string }[]).map((c) =>
      c.name
    );
    assert.deepEqual(names, [
      "qmp_capabilities",
      "query-version",
      "query-commands",
      "migrate",
      "migrate_cancel",
      "query-migrate",
      "migrate-set-parameters",
      "query-migrate-parameters",
    ]);
  } finally {
    await u.done();
  }
});

Deno.test("migrate-set-capabilities checks its entries, passes them on, and query-migrate-capabilities lists them", async () => {
  let caps = [{ capability: "auto-converge", state: true }];
  const seen: Record<string, unknown>[][] = [];
  const withCaps: MigrationControl = {
    migrate() {},
    cancel() {},
    query: () => ({}),
    setParameters() {},
    parameters: () => ({}),
    setCapabilities(c) {
      seen.push(c);
      caps = c.map((e) => ({ capability: e.capability as string, state: e.state as boolean }));
    },
    capabilities: () => caps,
  };
  const t = await setup(withCaps);
  try {
    const bad = [
      [{}, "Parameter 'capabilities' is missing"],
      [
        { capabilities: "auto-converge" },
        "Invalid parameter type for 'capabilities', expected: array of objects",
      ],
      [
        { capabilities: [{ capability: "auto-converge" }] },
        "Parameter 'capabilities.state' is missing or not a boolean",
      ],
      [
        { capabilities: [{ capability: 1, state: true }] },
        "Parameter 'capabilities.capability' is missing or not a string",
      ],
      [
        { capabilities: [{ capability: "auto-converge", state: true, x: 1 }] },
        "Parameter 'capabilities.x' is unexpected",
      ],
    ] as const;
    for (const [args, desc] of bad) {
      assert.deepEqual(await t.client.execute("migrate-set-capabilities", args), {
        error: { class: "GenericError", desc },
      });
    }
    assert.deepEqual(seen, [], "nothing reached the migration code");
    const off = [{ capability: "auto-converge", state: false }];
    assert.deepEqual(await t.client.execute("migrate-set-capabilities", { capabilities: off }), {
      return: {},
    });
    assert.deepEqual(seen, [off]);
    assert.deepEqual(await t.client.execute("query-migrate-capabilities"), { return: off });
  } finally {
    await t.done();
  }
});
