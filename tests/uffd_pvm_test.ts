/**
 * Does KVM on this host (PVM, DESIGN.md §1) resolve guest accesses through userfaultfd? Post-copy
 * migration depends on the answer. On real KVM with the real probe guest, in one process:
 *
 * a source VM fills 32 MiB with per-page xorshift data (`mode=fill`) and is paused; a fresh
 * destination VM gets its state but **no RAM at all**: every page is registered with userfaultfd
 * in MISSING mode, and a server thread (a Worker) supplies each page on demand with UFFDIO_COPY
 * from the source. The guest then verifies every page of its area; KVM walks the guest page tables
 * and reads the PVM VIF page inside the kernel; the VMM reads guest RAM from the main thread.
 */
import assert from "node:assert/strict";
import { Vm, type VmSpec } from "../src/machine/vm.ts";
import { discardPages, Userfault } from "../src/memory/userfault.ts";
import { restoreSections, saveSections } from "../src/migration/mod.ts";
import { PROBE, tempDir } from "./_fixture/ferry.ts";
import { serialLines as lines, waitForSerial as waitFor } from "./_fixture/serial_file.ts";
import type { ServeReport, ServeRequest } from "./_fixture/uffd_server_worker.ts";

const AREA_GPA = 16 << 20;

function spec(serialPath: string): VmSpec {
  return {
    memoryBytes: 128 << 20,
    cpus: 1,
    serial: { kind: "file", path: serialPath },
    kernel: { path: PROBE, cmdline: "mode=fill mib=32 rate=0 cpus=1 interval_ms=100" },
  };
}

/** Waits for a `PROBE VERIFY ok` round of at least `round` (VERIFY lines come at progress ticks, so rounds are skipped). */
async function waitForRound(path: string, round: number, timeoutMs = 20000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    for (const l of lines(path)) {
      const m = l.match(/PROBE VERIFY ok round=(\d+)/);
      if (m && Number(m[1]) >= round) return;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`No PROBE VERIFY ok round >= ${round} in ${path}:\n${lines(path).slice(-15).join("\n")}`);
}

/** Why userfaultfd is unusable here (no syscall, no /dev/userfaultfd, no privilege), if it is. */
const unusable = (() => {
  try {
    Userfault.open().close();
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
})();

Deno.test({
  name: "PVM resolves guest, KVM-internal and VMM accesses to missing pages through userfaultfd",
  ignore: unusable !== undefined,
}, async () => {
  const dir = tempDir();
  const serial1 = `${dir}/src.txt`, serial2 = `${dir}/dst.txt`;
  const src = await Vm.create(spec(serial1), { boot: true });
  let dst: Vm | undefined;
  let uf: Userfault | undefined;
  let worker: Worker | undefined;
  try {
    await src.resume();
    await waitFor(serial1, /PROBE READY .*native=1/);
    await waitFor(serial1, /PROBE FILLED pages=8192/);
    await waitFor(serial1, /PROBE VERIFY ok round=1/);
    await src.pause();
    const sections = saveSections(src.migratables());
    const vcpu0 = src.saveVcpu(0);
    const cr3 = Number(new DataView(vcpu0.sregs.buffer, vcpu0.sregs.byteOffset).getBigUint64(240, true));
    const vif = vcpu0.msrs.find((m) => m.index === 0x4b564d10);
    assert.ok(vif && (vif.value & 1n) === 1n, "the source vCPU ran in PVM native mode");
    const vifGpa = Number(vif.value & ~0xfffn);

    dst = await Vm.create(spec(serial2), { boot: false });
    // Nothing of the destination's RAM is present: whatever building the VM wrote is dropped.
    uf = Userfault.open();
    for (const r of dst.layout.regions) {
      discardPages(r.hostAddr, r.sizeBytes);
      uf.register(r.hostAddr, r.sizeBytes);
    }
    const stop = new SharedArrayBuffer(4), served = new SharedArrayBuffer(4);
    worker = new Worker(new URL("./_fixture/uffd_server_worker.ts", import.meta.url), { type: "module" });
    const report = new Promise<ServeReport>((resolve, reject) => {
      worker!.onmessage = (e: MessageEvent<ServeReport>) => resolve(e.data);
      worker!.onerror = (e) => {
        e.preventDefault();
        reject(new Error(e.message));
      };
    });
    const regions = dst.layout.regions.map((r, i) => ({
      gpa: r.gpa,
      sizeBytes: r.sizeBytes,
      dstAddr: r.hostAddr,
      srcAddr: src.layout.regions[i]!.hostAddr,
    }));
    worker.postMessage({ fd: uf.fd, regions, stop, served } satisfies ServeRequest);

    // The VMM's own access (device code reading guest RAM) waits for the server thread.
    const probeGpa = AREA_GPA + 4095 * 4096;
    const seen = dst.memory.regionOf(probeGpa, 4096)!.bytes.slice(probeGpa, probeGpa + 4096);
    assert.deepEqual(seen, src.memory.regionOf(probeGpa, 4096)!.bytes.slice(probeGpa, probeGpa + 4096));
    assert.ok(Atomics.load(new Int32Array(served), 0) >= 1, "the VMM's read was served through userfaultfd");

    restoreSections(dst.migratables(), sections);
    await dst.resume();
    // Two more rounds hold at least one full verify sweep: every page of the area is read.
    const before = lines(serial2).length;
    const m = await waitFor(serial2, /PROBE VERIFY ok round=(\d+)/);
    await waitForRound(serial2, Number(m[1]) + 2);
    await dst.pause();
    Atomics.store(new Int32Array(stop), 0, 1);
    const { gpas } = await report;
    const out = lines(serial2);
    assert.ok(!out.some((l) => /FAIL|EXCEPTION/.test(l)), out.slice(-10).join("\n"));
    assert.ok(out.length > before, "the destination guest ran");
    const faulted = new Set(gpas);
    const area = gpas.filter((g) => g >= AREA_GPA && g < AREA_GPA + (32 << 20)).length;
    assert.equal(area, 8192, "every page of the guest's area faulted once and was served");
    assert.ok(
      faulted.has(cr3 & ~0xfff),
      `KVM's walk of the guest page tables (CR3 0x${cr3.toString(16)}) faulted`,
    );
    assert.ok(faulted.has(vifGpa), `KVM's read of the PVM VIF page (0x${vifGpa.toString(16)}) faulted`);
    assert.equal(faulted.size, gpas.length, "no page faulted twice (each copy woke its waiter)");
  } finally {
    if (worker) worker.terminate();
    await dst?.destroy();
    uf?.close();
    await src.destroy();
    Deno.removeSync(dir, { recursive: true });
  }
});
