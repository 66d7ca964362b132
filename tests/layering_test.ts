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

/** The relative specifiers a module imports: static imports and re-exports, and `import("./x.ts")` (lazy loads). */
function relativeImports(text: string): RegExpMatchArray[] {
  return [
    ...text.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+"(\.[^"]+)"/gms),
    ...text.matchAll(/\bimport\(\s*"(\.[^"]+)"\s*\)/g),
  ];
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
    for (const m of relativeImports(text)) {
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
    for (const m of relativeImports(text)) {
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

/**
 * Modules a process loads at start: the static, non-type-only imports reachable from `entry`
 * (dynamic `import()` is a lazy load and is not followed). Returns project paths and bare
 * specifiers (`node:…`).
 */
function startupModules(entry: string): Set<string> {
  const seen = new Set<string>();
  const todo = [entry];
  for (let file = todo.pop(); file !== undefined; file = todo.pop()) {
    if (seen.has(file)) continue;
    seen.add(file);
    if (!file.startsWith("/")) continue;
    const text = Deno.readTextFileSync(file);
    for (const m of text.matchAll(/^\s*(?:import|export)\s+(?!type\b)([^;]*?)\s*from\s+"([^"]+)"/gms)) {
      const names = m[1]!.trim();
      const typesOnly = names.startsWith("{") &&
        names.slice(1, -1).split(",").map((n) => n.trim()).filter(Boolean).every((n) =>
          n.startsWith("type ")
        );
      if (typesOnly) continue;
      const spec = m[2]!;
      todo.push(spec.startsWith(".") ? new URL(spec, `file://${file}`).pathname : spec);
    }
  }
  return seen;
}

Deno.test("the VMM and the vCPU Worker load no node: built-ins and no virtio code at start", () => {
  for (const entry of [`${ROOT}main.ts`, `${ROOT}src/machine/vcpu_worker.ts`]) {
    const loaded = [...startupModules(entry)];
    assert.ok(loaded.length > 10, `${entry}: ${loaded.length} modules`);
    // Deno's Node layer costs each isolate ~6 MiB resident and ~10 ms; virtio loads only with -device.
    const heavy = loaded.filter((m) => m.startsWith("node:") || m.includes("/src/devices/virtio/"))
      .filter((m) => !m.endsWith("/src/devices/virtio/net/mac.ts"));
    assert.deepEqual(heavy, [], `${entry.slice(ROOT.length)} loads at start: ${heavy.join(", ")}`);
  }
});
