import assert from "node:assert/strict";
import { QmpServer } from "../server.ts";
import { FakeMachine, type Json, tempSocketPath, TestClient } from "../_testing.ts";
import { MachineEvents, registerMachineCommands } from "./machine.ts";

async function setup() {
  const { dir, path } = await tempSocketPath();
  const server = new QmpServer({ path });
  const machine = new FakeMachine(server);
  registerMachineCommands(server, machine);
  await server.listen();
  const { client } = await TestClient.open(path);
  return {
    server,
    machine,
    client,
    async done() {
      client.close();
      await server.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("query-status reports status, running and singlestep", async () => {
  const t = await setup();
  try {
    assert.deepEqual(await t.client.execute("query-status"), {
      return: { status: "running", running: true, singlestep: false },
    });
    for (const s of ["paused", "inmigrate", "postmigrate", "shutdown", "prelaunch"] as const) {
      t.machine.state = s;
      assert.deepEqual(await t.client.execute("query-status"), {
        return: { status: s, running: false, singlestep: false },
      });
    }
  } finally {
    await t.done();
  }
});

Deno.test("stop and cont reply {} after the STOP/RESUME event the machine emits", async () => {
  const t = await setup();
  try {
    await t.client.sendRaw('{"execute":"stop","id":1}\n');
    const stop = await t.client.next();
    assert.equal(stop.event, "STOP");
    assert.deepEqual(stop.data, {});
    assert.deepEqual(await t.client.next(), { return: {}, id: 1 });
    assert.equal(t.machine.state, "paused");
    await t.client.sendRaw('{"execute":"cont","id":2}\n');
    assert.equal((await t.client.next()).event, "RESUME");
    assert.deepEqual(await t.client.next(), { return: {}, id: 2 });
    assert.deepEqual(t.machine.calls, ["stop", "cont"]);
  } finally {
    await t.done();
  }
});

Deno.test("cont on a VM waiting for an incoming migration is MigrationExpected", async () => {
  const t = await setup();
  try {
    t.machine.state = "inmigrate";
    assert.deepEqual(await t.client.execute("cont"), {
      error: { class: "MigrationExpected", desc: "Guest is waiting for an incoming migration" },
    });
    assert.deepEqual(t.machine.calls, []);
  } finally {
    await t.done();
  }
});

Deno.test("system_reset and system_powerdown reply {} and the machine's events follow", async () => {
  const t = await setup();
  try {
    assert.deepEqual(await t.client.execute("system_reset"), { return: {} });
    assert.deepEqual((await t.client.event("RESET")).data, { guest: false, reason: "host-qmp-system-reset" });
    assert.deepEqual(await t.client.execute("system_powerdown"), { return: {} });
    assert.deepEqual((await t.client.event("POWERDOWN")).data, {});
    assert.deepEqual(t.machine.calls, ["reset", "powerdown"]);
  } finally {
    await t.done();
  }
});

Deno.test("quit replies {} before the machine quits, then SHUTDOWN arrives", async () => {
  const t = await setup();
  try {
    await t.client.sendRaw('{"execute":"quit"}\n');
    assert.deepEqual(await t.client.next(), { return: {} });
    const shutdown = await t.client.next();
    assert.equal(shutdown.event, "SHUTDOWN");
    assert.deepEqual(shutdown.data, { guest: false, reason: "host-qmp-quit" });
    assert.deepEqual(t.machine.calls, ["quit"]);
  } finally {
    await t.done();
  }
});

Deno.test("query-cpus-fast lists each vCPU in QEMU's shape", async () => {
  const t = await setup();
  try {
    const reply = await t.client.execute("query-cpus-fast");
    assert.deepEqual(
      reply.return,
      [0, 1].map((i) => ({
        "cpu-index": i,
        "qom-path": `/machine/unattached/device[${i}]`,
        "thread-id": 4242 + i,
        props: { "core-id": i, "thread-id": 0, "socket-id": 0 },
        target: "x86_64",
      })),
    );
  } finally {
    await t.done();
  }
});

Deno.test("machine commands refuse arguments", async () => {
  const t = await setup();
  try {
    for (const name of ["stop", "cont", "quit", "query-status", "query-cpus-fast"]) {
      assert.deepEqual(await t.client.execute(name, { force: true }), {
        error: { class: "GenericError", desc: "Parameter 'force' is unexpected" },
      });
    }
    assert.deepEqual(t.machine.calls, []);
  } finally {
    await t.done();
  }
});

Deno.test("MachineEvents.runStateChanged() emits STOP leaving running and RESUME entering it", () => {
  const seen: [string, Json][] = [];
  const events = new MachineEvents({ emit: (name, data = {}) => void seen.push([name, data]) });
  events.runStateChanged("running", "paused");
  events.runStateChanged("paused", "running");
  events.runStateChanged("running", "postmigrate");
  events.runStateChanged("inmigrate", "running");
  events.runStateChanged("paused", "paused");
  events.runStateChanged("paused", "shutdown");
  events.reset("guest-reset");
  events.shutdown("guest-shutdown");
  assert.deepEqual(seen, [
    ["STOP", {}],
    ["RESUME", {}],
    ["STOP", {}],
    ["RESUME", {}],
    ["RESET", { guest: true, reason: "guest-reset" }],
    ["SHUTDOWN", { guest: true, reason: "guest-shutdown" }],
  ]);
});
