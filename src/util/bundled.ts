/**
 * Where ferry's own files are when it runs from its bundle (`zig-out/js/*.js`, built by
 * `scripts/bundle.ts`: one file per entry point, all in one directory) instead of from source.
 * Every source module is a `.ts` file, so a module whose URL ends in `.js` is bundled.
 * @module
 */
import { logger } from "./log.ts";

/** Whether the module at `moduleUrl` (its `import.meta.url`) runs from ferry's bundle. */
export function isBundled(moduleUrl: string): boolean {
  return moduleUrl.endsWith(".js");
}

/**
 * The URL of a Worker entry point: `source` (a path relative to the calling module, e.g.
 * `"./vcpu_worker.ts"`) from source, or that entry point's bundle (`vcpu_worker.js`) beside the
 * calling bundle.
 */
export function workerUrl(source: string, moduleUrl: string): URL {
  if (!isBundled(moduleUrl)) return new URL(source, moduleUrl);
  const name = source.slice(source.lastIndexOf("/") + 1).replace(/\.ts$/, ".js");
  return new URL(`./${name}`, moduleUrl);
}

function mtimeMs(path: string): number {
  try {
    return Deno.statSync(path).mtime?.getTime() ?? 0;
  } catch {
    return 0;
  }
}

/**
 * The newest of ferry's sources under `root` (the repository: `main.ts`, `deno.json` and the
 * modules under `src/`, tests excluded): its path and modification time (ms).
 */
export function newestSource(root: string): { path: string; mtimeMs: number } {
  let newest = { path: `${root}main.ts`, mtimeMs: mtimeMs(`${root}main.ts`) };
  const consider = (path: string) => {
    const t = mtimeMs(path);
    if (t > newest.mtimeMs) newest = { path, mtimeMs: t };
  };
  consider(`${root}deno.json`);
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(dir)) {
      const p = `${dir}/${e.name}`;
      if (e.isDirectory) walk(p);
      else if (e.name.endsWith(".ts") && !e.name.endsWith("_test.ts")) consider(p);
    }
  };
  walk(`${root}src`);
  return newest;
}

/**
 * Says on stderr when the bundle at `moduleUrl` (`zig-out/js/ferry.js`) is older than a source
 * beside it: it runs older code than the tree holds (the task, the tests and the benchmarks rebuild
 * it first; a direct `deno run` does not). Nothing to do from source, or with no sources beside.
 */
export function warnIfStaleBundle(moduleUrl: string): void {
  if (!isBundled(moduleUrl) || !moduleUrl.startsWith("file:")) return;
  const root = decodeURIComponent(new URL("../../", moduleUrl).pathname);
  try {
    if (!Deno.statSync(`${root}src`).isDirectory) return;
  } catch {
    return;
  }
  const built = mtimeMs(decodeURIComponent(new URL(moduleUrl).pathname));
  const newest = newestSource(root);
  if (newest.mtimeMs > built) {
    logger("ferry").warn(
      "%s is older than %s: it runs older code; rebuild it with 'deno run -A %sscripts/bundle.ts'",
      decodeURIComponent(new URL(moduleUrl).pathname).slice(root.length),
      newest.path.slice(root.length),
      root,
    );
  }
}
