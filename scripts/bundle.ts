/**
 * Builds ferry's bundle, `zig-out/js/`: one JavaScript file per entry point (`ferry.js` from
 * `main.ts`, and each Worker's), all in one directory, with `deno bundle` (esbuild). ferry runs
 * from it (`deno task ferry`, the tests, the benchmarks): a single script starts faster and smaller
 * than ~130 TypeScript modules (no module graph, no transpile-cache lookups). `deno run -A main.ts`
 * runs the same code from source; `src/util/bundled.ts` finds the Workers and the shim either way.
 *
 * {@linkcode ensureBundle} rebuilds only when `main.ts`, `deno.json` or a module under `src/` is
 * newer than the bundle, so a bundle cannot run older code than the sources beside it.
 * `deno run -A scripts/bundle.ts [--force] [--quiet]` does it from the command line (`deno task ferry`).
 * @module
 */

import { newestSource } from "../src/util/bundled.ts";

const ROOT = new URL("../", import.meta.url).pathname;
/** The bundle's directory. */
export const BUNDLE_DIR = `${ROOT}zig-out/js`;
/** The bundled VMM (`main.ts`). */
export const FERRY_JS = `${BUNDLE_DIR}/ferry.js`;

/** Entry points: `main.ts` → `ferry.js`, and every Worker (`workerUrl()` in src/) under its own name. */
export const ENTRIES: readonly string[] = [
  "main.ts",
  "src/machine/vcpu_worker.ts",
  "src/devices/virtio/io_worker.ts",
  "src/migration/multifd_worker.ts",
];

/** `main.ts` → `ferry.js`, `src/…/x_worker.ts` → `x_worker.js` (the names `workerUrl()` resolves). */
function bundleName(entry: string): string {
  return entry === "main.ts" ? "ferry.js" : entry.slice(entry.lastIndexOf("/") + 1).replace(/\.ts$/, ".js");
}

function mtime(path: string): number {
  try {
    return Deno.statSync(path).mtime?.getTime() ?? Infinity;
  } catch {
    return -Infinity;
  }
}

/** Whether every bundle exists and is at least as new as every source. */
export function bundleFresh(): boolean {
  const built = Math.min(...ENTRIES.map((e) => mtime(`${BUNDLE_DIR}/${bundleName(e)}`)));
  return built >= newestSource(ROOT).mtimeMs;
}

/**
 * Moves a source map from where esbuild wrote it to `to`, its `sources` made relative to `to`'s
 * directory again (esbuild wrote them relative to its own).
 */
function placeSourceMap(from: string, to: string): void {
  const map = JSON.parse(Deno.readTextFileSync(from)) as { sources: string[] };
  const toDir = to.slice(0, to.lastIndexOf("/") + 1);
  map.sources = map.sources.map((s) => {
    const abs = new URL(s, `file://${from}`).pathname;
    return abs.startsWith(ROOT) && toDir.startsWith(ROOT)
      ? "../".repeat(toDir.slice(ROOT.length).split("/").length - 1) + abs.slice(ROOT.length)
      : `file://${abs}`;
  });
  Deno.writeTextFileSync(`${from}.tmp`, JSON.stringify(map));
  Deno.renameSync(`${from}.tmp`, to);
}

/**
 * Builds the bundle when it is missing or older than a source; returns the path of `ferry.js`.
 * Each file is written beside its final name and renamed into place, so a concurrent run sees the
 * old bundle or the new one, never a partial file.
 * @throws {Error} when `deno bundle` fails, with its output
 */
export function ensureBundle(options: { force?: boolean } = {}): string {
  if (!options.force && bundleFresh()) return FERRY_JS;
  const started = new Date();
  const tmp = Deno.makeTempDirSync({ dir: `${ROOT}zig-out`, prefix: ".js-" });
  try {
    const out = new Deno.Command(Deno.execPath(), {
      args: [
        "bundle",
        "--quiet",
        "--platform",
        "deno",
        // Minified: no comments, ASCII only (a non-ASCII character makes V8 hold the whole script as
        // two-byte text), short local names: −3 MiB resident. The source maps give stack traces the
        // TypeScript files, lines and names back (Deno reads them only to print a stack).
        "--minify",
        "--keep-names",
        "--sourcemap=linked",
        "--outdir",
        tmp,
        ...ENTRIES.map((e) => `${ROOT}${e}`),
      ],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).outputSync();
    if (!out.success) {
      const text = new TextDecoder().decode(out.stderr).trim();
      throw new Error(`Cannot bundle ferry: deno bundle failed: ${text}`);
    }
    Deno.mkdirSync(BUNDLE_DIR, { recursive: true });
    for (const e of ENTRIES) {
      // esbuild keeps the entries' directories below their common root (here, the repository).
      const built = `${tmp}/${e.replace(/\.ts$/, ".js")}`;
      const name = bundleName(e);
      placeSourceMap(`${built}.map`, `${BUNDLE_DIR}/${name}.map`);
      const js = Deno.readTextFileSync(built).replace(/\/\/# sourceMappingURL=\S+\s*$/, "");
      Deno.writeTextFileSync(built, `${js}//# sourceMappingURL=${name}.map\n`);
      // Stamped with the build's start: a source saved while bundling makes it stale again.
      Deno.utimeSync(built, started, started);
      Deno.renameSync(built, `${BUNDLE_DIR}/${name}`);
    }
  } finally {
    Deno.removeSync(tmp, { recursive: true });
  }
  return FERRY_JS;
}

let warned = false;

/**
 * The script `deno run -A` runs as ferry: the bundle, rebuilt first when stale, or `main.ts` with
 * `FERRY_FROM_SOURCE=1` (or, with a warning, when `deno bundle` fails here).
 */
export function ferryEntry(): string {
  if (Deno.env.get("FERRY_FROM_SOURCE") === "1") return `${ROOT}main.ts`;
  try {
    return ensureBundle();
  } catch (e) {
    if (!warned) {
      warned = true;
      Deno.stderr.writeSync(new TextEncoder().encode(`${(e as Error).message}; running main.ts\n`));
    }
    return `${ROOT}main.ts`;
  }
}

/**
 * Deno's arguments that run ferry, before ferry's own: `run -A --no-config zig-out/js/ferry.js`
 * (see {@linkcode ferryEntry}). The bundle needs no `deno.json`, and `--no-config` keeps the one
 * of the current directory (another project's, say) out of it.
 * @param denoFlags more flags for `deno run` (e.g. `--cpu-prof`)
 */
export function ferryRunArgs(denoFlags: string[] = []): string[] {
  const entry = ferryEntry();
  const config = entry === FERRY_JS ? ["--no-config"] : [];
  return ["run", "-A", ...config, ...denoFlags, entry];
}

if (import.meta.main) {
  const force = Deno.args.includes("--force");
  const fresh = !force && bundleFresh();
  ensureBundle({ force });
  if (!fresh && !Deno.args.includes("--quiet")) {
    Deno.stderr.writeSync(new TextEncoder().encode(`bundled ferry into ${BUNDLE_DIR}\n`));
  }
}
