/**
 * How much backing fresh memory costs on this host right now: maps `MIB` MiB of anonymous memory,
 * backs it with `MADV_POPULATE_WRITE` (4 KiB pages) and unmaps it, `ROUNDS` times in a row, and
 * prints ms per GiB for each round. On a host that is itself a VM reporting free memory back to
 * its host (free page reporting), the first round pays the outer host's faults and later rounds
 * reuse warm memory; a migration destination pays the same on its first write to each page
 * (docs/migration-performance.md, "Host memory temperature").
 *
 * `deno run -A bench/_first_touch.ts [MIB=2048] [ROUNDS=3]`
 * @module
 */
import { shim } from "../src/ffi/shim.ts";

const MIB = 1024 * 1024;
const PROT_RW = 3, MAP_PRIVATE_ANON_NORESERVE = 0x22 | 0x4000;
const MADV_NOHUGEPAGE = 15, MADV_POPULATE_WRITE = 23;

/** Backs `bytes` of fresh anonymous memory once; returns the milliseconds it took. */
export function firstTouchMs(bytes: number): number {
  const lib = shim();
  const addr = BigInt(lib.ferry_mmap(0n, BigInt(bytes), PROT_RW, MAP_PRIVATE_ANON_NORESERVE, -1, 0n));
  if (addr < 0n) throw new Error(`Cannot map ${bytes} bytes: errno ${-addr}`);
  try {
    lib.ferry_madvise(addr, BigInt(bytes), MADV_NOHUGEPAGE); // 4 KiB pages, as UFFDIO_COPY lands them
    const t0 = performance.now();
    const rc = Number(lib.ferry_madvise(addr, BigInt(bytes), MADV_POPULATE_WRITE));
    if (rc < 0) throw new Error(`Cannot back ${bytes} bytes: errno ${-rc}`);
    return performance.now() - t0;
  } finally {
    lib.ferry_munmap(addr, BigInt(bytes));
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
