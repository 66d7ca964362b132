/**
 * Where ferry's own files are when it runs from its bundle (`zig-out/js/*.js`, built by
 * `scripts/bundle.ts`: one file per entry point, all in one directory) instead of from source.
 * Every source module is a `.ts` file, so a module whose URL ends in `.js` is bundled.
 * @module
 */

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
