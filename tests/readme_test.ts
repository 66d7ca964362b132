/**
 * The README's two commands are real: the tasks they call exist, `.ci/run` calls exactly the test
 * command, and the demo (the main job) reaches a completed live migration.
 */
import assert from "node:assert/strict";
import { ROOT } from "./_fixture/ferry.ts";

const readme = Deno.readTextFileSync(`${ROOT}README.md`);
const commands = [...readme.matchAll(/^(npx --yes deno@[\d.]+ task \w+)$/gm)].map((m) => m[1]!);
const tasks = JSON.parse(Deno.readTextFileSync(`${ROOT}deno.json`)).tasks as Record<string, string>;

Deno.test("README shows two commands, each a task of deno.json, and .ci/run calls the test command", () => {
  assert.equal(commands.length, 2, `commands found: ${commands.join(" | ")}`);
  const [demo, test] = commands as [string, string];
  assert.match(demo, /task demo$/);
  assert.match(test, /task test$/);
  for (const c of commands) assert.ok(c.split(" ").at(-1)! in tasks, `deno.json has task for '${c}'`);
  const ci = Deno.readTextFileSync(`${ROOT}.ci/run`);
  assert.ok(ci.split("\n").some((l) => l.trim().startsWith(test)), ".ci/run runs the README's test command");
  // The Deno version the commands pin is the one the tests run under.
  assert.ok(test.includes(`deno@${Deno.version.deno}`), `README pins deno@${Deno.version.deno}`);
});

Deno.test("the demo task boots the guest, migrates it live and reaches completed", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}scripts/demo.ts`],
    env: { FERRY_DEMO_SECONDS: "1", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, text.split("\n").slice(-30).join("\n"));
  assert.match(text, /migration completed/);
  assert.match(text, /\[destination\]\s+PROBE (PROGRESS|VERIFY ok)/);
  assert.match(text, /source: postmigrate\s+destination: running/);
  assert.ok(tasks.demo!.includes("scripts/demo.ts"), "the demo task runs scripts/demo.ts");
});
