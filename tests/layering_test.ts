/**
 * Imports point down (STYLE.md c.2): main.ts → vmm → qmp, migration, client, config → machine →
 * devices, bus → memory, kvm, sys → ffi, util. A module may import its own layer or below, never above.
 */
import assert from "node:assert/strict";
import { ROOT } from "./_fixture/ferry.ts";

const RANK: Record<string, number> = {
  util: 0,
  ffi: 1,
  kvm: 2,
  memory: 2,
  sys: 2,
  bus: 3,
  devices: 3,
  machine: 4,
  config: 5,
  migration: 5,
  qmp: 5,
  client: 5,
  vmm: 6,
};

function* walk(dir: string): Generator<string> {
  for (const e of Deno.readDirSync(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) yield* walk(p);
    else if (e.name.endsWith(".ts") && !e.name.endsWith("_test.ts") && !e.name.startsWith("_test")) yield p;
  }
}

function layerOf(path: string): string | undefined {
  const m = path.match(/\/src\/([^/]+)\//);
  return m?.[1];
}

Deno.test("src/ modules import only their own layer or the layers below", () => {
  const violations: string[] = [];
  const src = `${ROOT}src`;
  let files = 0;
  for (const file of walk(src)) {
    files++;
    const from = layerOf(file)!;
    assert.ok(from in RANK, `unknown layer '${from}' (add it to the table in this test)`);
    const text = Deno.readTextFileSync(file);
    for (const m of text.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+"(\.[^"]+)"/gms)) {
      const target = new URL(m[1]!, `file://${file}`).pathname;
      const to = layerOf(target);
      if (!to || to === from) continue;
      if (!(to in RANK) || RANK[to]! > RANK[from]!) violations.push(`${file.slice(ROOT.length)} → ${m[1]}`);
    }
  }
  assert.ok(files > 50, `walked ${files} files`);
  assert.deepEqual(violations, [], `upward imports:\n${violations.join("\n")}`);
});

/** Every `src/` module (tests excluded) → the `src/` modules it imports. */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of walk(`${ROOT}src`)) {
    const deps: string[] = [];
    const text = Deno.readTextFileSync(file);
    for (const m of text.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+"(\.[^"]+)"/gms)) {
      deps.push(new URL(m[1]!, `file://${file}`).pathname);
    }
    graph.set(file, deps);
  }
  return graph;
}

/** One import cycle (as a path that returns to its start), or undefined. */
function findCycle(graph: Map<string, string[]>): string[] | undefined {
  const state = new Map<string, "open" | "done">();
  const path: string[] = [];
  function visit(node: string): string[] | undefined {
    state.set(node, "open");
    path.push(node);
    for (const dep of graph.get(node) ?? []) {
      if (!graph.has(dep)) continue;
      if (state.get(dep) === "open") return [...path.slice(path.indexOf(dep)), dep];
      if (!state.has(dep)) {
        const found = visit(dep);
        if (found) return found;
      }
    }
    path.pop();
    state.set(node, "done");
    return undefined;
  }
  for (const node of graph.keys()) {
    if (state.has(node)) continue;
    const found = visit(node);
    if (found) return found;
  }
  return undefined;
}

Deno.test("src/ modules import one another without cycles (type-only imports included)", () => {
  const graph = importGraph();
  assert.ok(graph.size > 50, `walked ${graph.size} files`);
  const cycle = findCycle(graph);
  assert.equal(cycle, undefined, `import cycle: ${cycle?.map((f) => f.slice(ROOT.length)).join(" → ")}`);
});

Deno.test("findCycle() reports a two-module cycle and accepts a chain", () => {
  assert.deepEqual(findCycle(new Map([["a", ["b"]], ["b", ["a"]]])), ["a", "b", "a"]);
  assert.equal(findCycle(new Map([["a", ["b"]], ["b", ["c"]], ["c", []]])), undefined);
});
