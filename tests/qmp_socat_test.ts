/**
 * The QMP server as operators' tools see it: `socat - UNIX-CONNECT:PATH` and `ncat -U PATH` talk to a
 * server running in this test process with fake backends. Each test is skipped, with the reason in
 * its name, when its tool is not installed (`apt-get install -y socat ncat`).
 */
import assert from "node:assert/strict";
import {
  type MachineControl,
  type MigrationControl,
  QmpServer,
  registerMachineCommands,
  registerMigrationCommands,
} from "../src/qmp/mod.ts";

async function installed(tool: string, versionFlag: string): Promise<boolean> {
  try {
    await new Deno.Command(tool, { args: [versionFlag], stdout: "null", stderr: "null" }).output();
    return true;
  } catch {
    return false;
  }
}

const machine: MachineControl = {
  status: () => "running",
  stop: () => Promise.resolve(),
  cont: () => Promise.resolve(),
  reset: () => Promise.resolve(),
  powerdown: () => Promise.resolve(),
  quit: () => Promise.resolve(),
  cpus: () => [{ index: 0, threadId: 1234 }],
};

const migration: MigrationControl = {
  migrate() {},
  cancel() {},
  query: () => ({ status: "setup" }),
  setParameters() {},
  parameters: () => ({ "downtime-limit": 300, "max-bandwidth": 134217728 }),
};

async function withServer(fn: (path: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "qmps" });
  const server = new QmpServer({ path: `${dir}/qmp.sock` });
  registerMachineCommands(server, machine);
  registerMigrationCommands(server, migration);
  await server.listen();
  try {
    await fn(server.path);
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Runs `cmd`, writes each input line once the previous reply has arrived, and returns every line it
 * printed (CRLF kept). Closes stdin at the end so the tool exits.
 */
async function converse(cmd: string, args: string[], inputs: string[]): Promise<string[]> {
  const child = new Deno.Command(cmd, { args, stdin: "piped", stdout: "piped", stderr: "piped" }).spawn();
  const writer = child.stdin.getWriter();
  const reader = child.stdout.getReader();
  const decoder = new TextDecoder();
  const lines: string[] = [];
  let pending = "";
  const timer = setTimeout(() => child.kill(), 10_000);
  async function readLine(): Promise<string> {
    for (;;) {
      const nl = pending.indexOf("\n");
      if (nl >= 0) {
        const line = pending.slice(0, nl + 1);
        pending = pending.slice(nl + 1);
        lines.push(line);
        return line;
      }
      const { value, done } = await reader.read();
      if (done) throw new Error(`Cannot read from ${cmd}: output ended after ${JSON.stringify(lines)}`);
      pending += decoder.decode(value, { stream: true });
    }
  }
  try {
    await readLine(); // greeting
    for (const input of inputs) {
      await writer.write(new TextEncoder().encode(input));
      await readLine();
    }
  } finally {
    await writer.close().catch(() => {});
    reader.releaseLock();
    await child.stdout.cancel().catch(() => {});
    await child.stderr.cancel().catch(() => {});
    await child.status;
    clearTimeout(timer);
  }
  return lines;
}

function checkConversation(lines: string[]): void {
  assert.equal(lines.length, 3);
  for (const line of lines) assert.ok(line.endsWith("\r\n"), `no CRLF: ${JSON.stringify(line)}`);
  const greeting = JSON.parse(lines[0]!);
  assert.deepEqual(Object.keys(greeting.QMP), ["version", "capabilities"]);
  assert.equal(typeof greeting.QMP.version.qemu.major, "number");
  assert.match(greeting.QMP.version.package, /^ferry-\d+\.\d+\.\d+$/);
  assert.deepEqual(JSON.parse(lines[1]!), { return: { status: "setup" } });
  assert.deepEqual(JSON.parse(lines[2]!), {
    return: { status: "running", running: true, singlestep: false },
  });
}

const hasSocat = await installed("socat", "-V");
const hasNcat = await installed("ncat", "--version");

Deno.test({
  name: `QMP answers socat - UNIX-CONNECT${hasSocat ? "" : " (skipped: socat is not installed)"}`,
  ignore: !hasSocat,
  async fn() {
    await withServer(async (path) => {
      const lines = await converse("socat", ["-", `UNIX-CONNECT:${path}`], [
        '{"execute":"query-migrate"}\n',
        '{"execute":"query-status"}\n',
      ]);
      checkConversation(lines);
    });
  },
});

Deno.test({
  name: `QMP answers ncat -U${hasNcat ? "" : " (skipped: ncat is not installed)"}`,
  ignore: !hasNcat,
  async fn() {
    await withServer(async (path) => {
      const lines = await converse("ncat", ["-U", path], [
        '{"execute":"query-migrate"}\n',
        '{ "execute": "query-status" }\n',
      ]);
      checkConversation(lines);
    });
  },
});
