/**
 * What a migration would otherwise pay on its own clock for the first use of the runtime in a
 * process: Deno loads its timers (they are built on its Node.js layer) on an isolate's first
 * `setTimeout`, ~10 ms alone and 20 ms on a busy host, and opens each shim symbol on its first
 * use (a dlopen(3) and a compiled trampoline, 0.2-1 ms each: ffi/shim.ts). A source paid both
 * inside the migration's total time (its connect step took 21 ms, 1 of them connecting), a
 * destination inside the source's setup. The VMM warms them when a migration is being prepared,
 * as it starts the multifd Workers then: a destination as it starts listening, a source at
 * `migrate-set-parameters` or `migrate-set-capabilities` (what QMP clients such as libvirt send
 * before `migrate`; a bare `migrate` pays them as before). A VM that never prepares a migration
 * never loads Deno's Node.js layer (~3 MiB resident: architecture.md, "No `node:` built-ins at
 * start"). 512 MiB filled, paused, unix, in alternating pairs: total 461-487 to 413-429 ms (setup
 * 26 to 17 ms); docs/migration-performance.md.
 * @module
 */
import { type Shim, shim } from "../ffi/shim.ts";

/** The shim symbols a migration's connection, RAM path and switch-over open, on either side. */
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
  "ferry_close", // the destination's userfaultfd, closed at the first message after RAM
  "ferry_tgkill", // the source's switch-over pause kicks its vCPUs
  "ferry_pipe", // a unix source's pages go by reference (splice.ts)
  "ferry_splice_out_async",
];

let warmed = false;

/** Loads the timers and opens {@linkcode MIGRATION_SYMBOLS} in this isolate, once. */
export function warmMigrationPath(): void {
  if (warmed) return;
  warmed = true;
  clearTimeout(setTimeout(() => {}, 0));
  const s = shim();
  for (const name of MIGRATION_SYMBOLS) void s[name];
}
