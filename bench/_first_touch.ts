/**
 * How much backing fresh memory costs on this host right now: maps `MIB` MiB of guest RAM as a
 * migration destination does, backs it with `MADV_POPULATE_WRITE` and unmaps it, `ROUNDS` times in
 * a row, and prints ms per GiB for each round. On a host that is itself a VM reporting free memory back to
 * its host (free page reporting), the first round pays the outer host's faults and later rounds
 * reuse warm memory; a migration destination pays the same on its first write to each page
 * (docs/migration-performance.md, "Host memory temperature").
 *
 * `deno run -A bench/_first_touch.ts [MIB=2048] [ROUNDS=3]`
 * @module
 */
import { shim } from "../src/ffi/shim.ts";
import { allocateRam, freeRam } from "../src/memory/host_memory.ts";

const MIB = 1024 * 1024;
const MADV_POPULATE_WRITE = 23;

/**
 * Backs `bytes` of fresh guest RAM, mapped as a migration destination maps it (no huge pages
 * advised), once; returns the milliseconds it took.
 */
export function firstTouchMs(bytes: number): number {
  const layout = allocateRam([{ gpa: 0, sizeBytes: bytes }], { hugePages: false });
  try {
    const addr = layout.regions[0]!.hostAddr;
    const t0 = performance.now();
    const rc = Number(shim().ferry_madvise(addr, BigInt(bytes), MADV_POPULATE_WRITE));
    if (rc < 0) throw new Error(`Cannot back ${bytes} bytes: errno ${-rc}`);
    return performance.now() - t0;
  } finally {
    freeRam(layout);
  }
}

if (import.meta.main) {
  const mib = Number(Deno.args[0] ?? 2048);
  const rounds = Number(Deno.args[1] ?? 3);
  for (let r = 1; r <= rounds; r++) {
    const ms = firstTouchMs(mib * MIB);
    const perGiB = ms / (mib / 1024);
    Deno.stdout.writeSync(
      new TextEncoder().encode(
        `round ${r}: ${mib} MiB backed in ${ms.toFixed(0)} ms (${perGiB.toFixed(0)} ms/GiB)\n`,
      ),
    );
  }
}
