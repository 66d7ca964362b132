/**
 * What a migration would otherwise pay on its own clock for the first use of the runtime in a
 * process: Deno loads its timers (they are built on its Node.js layer) on an isolate's first
 * `setTimeout`, ~10 ms alone and 20 ms on a busy host, and opens each shim symbol on its first
 * use (a dlopen(3) and a compiled trampoline, 0.2-1 ms each: ffi/shim.ts). A source paid both
 * inside the migration's total time (its connect step took 21 ms, 1 of them connecting), a
 * destination inside the source's setup. The VMM warms them once the guest runs: 512 MiB filled,
 * paused, unix, in alternating pairs, the total went from 461-487 to 413-429 ms (setup 26 → 17 ms).
 * The timers cost every VMM ~3 MiB of RSS; the symbols nothing measurable
 * (docs/migration-performance.md).
 * @module
 */
import { type Shim, shim } from "../ffi/shim.ts";

/** The shim symbols a migration's connection and RAM path open, on either side. */
export const MIGRATION_SYMBOLS: readonly (keyof Shim)[] = [
  "ferry_socket_address",
  "ferry_getsockopt_int",
  "ferry_setsockopt_int",
  "ferry_crc32c",
  "ferry_crc32c_pages",
  "ferry_copy_crc32c",
  "ferry_copy_crc32c_pages",
  "ferry_mincore",
  "ferry_scan_runs",
  "ferry_uffd_open",
  "ferry_uffd_api",
  "ferry_uffd_register",
  "ferry_uffd_place_async",
];

/** Loads the timers and opens {@linkcode MIGRATION_SYMBOLS} in this isolate (idempotent). */
export function warmMigrationPath(): void {
  clearTimeout(setTimeout(() => {}, 0));
  const s = shim();
  for (const name of MIGRATION_SYMBOLS) void s[name];
}
