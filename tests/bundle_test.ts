/**
 * ferry's bundle (`scripts/bundle.ts`, `zig-out/js/`): every Worker is an entry point of it, and a
 * bundle older than a source is rebuilt before it runs.
 */
import assert from "node:assert/strict";
import { BUNDLE_DIR, bundleFresh, ensureBundle, ENTRIES, FERRY_JS } from "../scripts/bundle.ts";
import { probeArgs, ROOT } from "./_fixture/ferry.ts";
import { newestSource } from "../src/util/bundled.ts";

function* walk(dir: string): Generator<string> {
  for (const e of Deno.readDirSync(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) yield* walk(p);
    else if (e.name.endsWith(".ts") && !e.name.endsWith("_test.ts")) yield p;
  }
}

Deno.test("every Worker that src/ starts is a bundle entry point, under a name of its own", () => {
  const workers: string[] = [];
  for (const file of walk(`${ROOT}src`)) {
    const text = Deno.readTextFileSync(file);
    // A Worker from `new URL(...)` would be missing from the bundle: src/ uses workerUrl().
    assert.doesNotMatch(text, /new Worker\(\s*new URL/, `${file.slice(ROOT.length)}: use workerUrl()`);
    for (const m of text.matchAll(/workerUrl\(\s*"([^"]+)"/g)) {
      workers.push(new URL(m[1]!, `file://${file}`).pathname.slice(ROOT.length));
    }
  }
  assert.ok(workers.length >= 3, `found ${workers.join(", ")}`);
  for (const w of workers) assert.ok(ENTRIES.includes(w), `${w} is not in scripts/bundle.ts ENTRIES`);
  const names = ENTRIES.map((e) => e.slice(e.lastIndexOf("/") + 1));
  assert.equal(new Set(names).size, names.length, `entry names collide: ${names.join(", ")}`);
});

Deno.test("a bundle older than the sources is rebuilt before it runs", () => {
  ensureBundle();
  assert.ok(bundleFresh());
  const old = new Date(0);
  Deno.utimeSync(`${BUNDLE_DIR}/vcpu_worker.js`, old, old);
  assert.equal(bundleFresh(), false, "a stale Worker bundle counts as stale");
  assert.equal(ensureBundle(), FERRY_JS);
  assert.ok(bundleFresh());
  assert.ok(Deno.statSync(`${BUNDLE_DIR}/vcpu_worker.js`).mtime!.getTime() > 0);
});

Deno.test("a bundle run directly while older than a source says so on stderr, and runs", async () => {
  ensureBundle();
  const old = new Date(newestSource(ROOT).mtimeMs - 1000);
  Deno.utimeSync(FERRY_JS, old, old);
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--no-config",
        FERRY_JS,
        ...probeArgs({ append: "mode=idle interval_ms=10 rounds=1" }),
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    assert.match(new TextDecoder().decode(out.stdout), /PROBE READY/);
    assert.match(stderr, /zig-out\/js\/ferry\.js is older than \S+\.ts: it runs older code; rebuild it with/);
  } finally {
    ensureBundle();
  }
  assert.ok(bundleFresh());
});
