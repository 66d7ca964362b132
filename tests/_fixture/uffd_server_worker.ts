/**
 * A userfaultfd server in its own thread (tests/uffd_pvm_test.ts): serves each fault on the
 * destination's RAM with UFFDIO_COPY of the same page of the source VM's RAM (same process, so
 * the source RAM is plain memory here), records the guest physical address of each fault, and
 * stops when `stop[0]` becomes 1.
 * @module
 */
import { Userfault } from "../../src/memory/userfault.ts";
import { viewAt } from "../../src/ffi/shim.ts";

/** One RAM region: where it is in the guest, on the destination and on the source. */
export interface ServedRegion {
  gpa: number;
  sizeBytes: number;
  dstAddr: bigint;
  srcAddr: bigint;
}

/** The start message. */
export interface ServeRequest {
  fd: number;
  regions: ServedRegion[];
  stop: SharedArrayBuffer;
  /** Counts served faults (Atomics), so the main thread can see progress. */
  served: SharedArrayBuffer;
}

/** The final message: guest physical addresses of the faults (in order) and write flags. */
export interface ServeReport {
  gpas: number[];
  writes: number;
}

self.onmessage = (ev: MessageEvent<ServeRequest>) => {
  const { fd, regions, stop, served } = ev.data;
  const uf = Userfault.adopt(fd);
  const stopFlag = new Int32Array(stop);
  const count = new Int32Array(served);
  const gpas: number[] = [];
  let writes = 0;
  while (Atomics.load(stopFlag, 0) === 0) {
    if (!uf.waitSync(50)) continue;
    for (const f of uf.readFaults()) {
      const page = f.address & ~4095n;
      const r = regions.find((x) => page >= x.dstAddr && page < x.dstAddr + BigInt(x.sizeBytes));
      if (!r) throw new Error(`fault at 0x${page.toString(16)} outside guest RAM`);
      const off = page - r.dstAddr;
      gpas.push(r.gpa + Number(off));
      if (f.write) writes++;
      Atomics.add(count, 0, 1); // before the copy: the copy wakes the waiter
      uf.copy(page, viewAt(r.srcAddr + off, 4096));
    }
  }
  self.postMessage({ gpas, writes } satisfies ServeReport);
};
