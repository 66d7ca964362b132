/**
 * The snapshot rows of `deno task bench migrate` (alone: `--only snapshot`): save and restore time
 * of a guest whose RAM is really filled, ferry `migrate file:` / `-incoming defer` +
 * `migrate-incoming file:` beside QEMU 7.2's `migrate exec:cat > FILE` / `migrate-incoming
 * exec:cat FILE` (7.2 has no `file:`), interleaved runs, medians, ratios.
 *
 * Guest: 512 MiB, `mode=dirty mib=448 rate=0` until it has written every page of its work area once,
 * then QMP `stop` (as the TLS rows: the data path, not convergence). `max-bandwidth` 64 GiB/s on both
 * (QEMU 7.2 defaults to 128 MiB/s). Save = wall time from `migrate` until `query-migrate` (polled
 * every 20 ms) says `completed`; restore = wall time from `migrate-incoming` until `query-status`
 * leaves `inmigrate` (process start-up excluded on both). The restored guest is `cont`inued and must
 * print progress. The file lands in a temp dir (tmpfs or disk: the same for both VMMs); ferry syncs
 * its data before the rename, QEMU's `cat` does not.
 * @module
 */
import { BenchVm } from "./_migrate_vm.ts";
import { cpuSeconds, ferryCommand, median, out, PROBE, qemuBaseArgs } from "./_util.ts";

const MIB = 1024 * 1024;
const MEM_MIB = 512;
const FILL_MIB = 448;
const GUEST = `mode=dirty mib=${FILL_MIB} rate=0 native=0 interval_ms=100 cpus=1`;
const MAX_BANDWIDTH = 64 * 1024 * MIB;

type Vmm = "ferry" | "qemu";

interface SnapRun {
  ok: boolean;
  error?: string;
  saveMs: number;
  restoreMs: number;
  /** CPU seconds of the VMM process and its reaped children (QEMU's `cat`) during the save / restore. */
  saveCpuS: number;
  restoreCpuS: number;
  fileBytes: number;
}

function vmArgs(vmm: Vmm, qmp: string, extra: string[]): { cmd: string; args: string[] } {
  const guest = ["-m", `${MEM_MIB}M`, "-smp", "1", "-kernel", PROBE, "-append", GUEST, "-serial", "stdio"];
  if (vmm === "ferry") {
    return ferryCommand(["-machine", "q35", ...guest, "-qmp", `unix:${qmp},server,nowait`, ...extra]);
  }
  return {
    cmd: "",
    args: [
      ...qemuBaseArgs(),
      "-no-user-config",
      ...guest,
      "-qmp",
      `unix:${qmp},server=on,wait=off`,
      ...extra,
    ],
  };
}

async function poll(
  call: () => Promise<Record<string, unknown>>,
  done: (r: Record<string, unknown>) => boolean,
  what: string,
): Promise<Record<string, unknown>> {
  for (const deadline = performance.now() + 120000;;) {
    const r = await call();
    if (done(r)) return r;
    if (performance.now() > deadline) throw new Error(`${what}: not done within 120 s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function once(vmm: Vmm, qemu: string | undefined): Promise<SnapRun> {
  const run: SnapRun = {
    ok: false,
    saveMs: NaN,
    restoreMs: NaN,
    saveCpuS: NaN,
    restoreCpuS: NaN,
    fileBytes: NaN,
  };
  const dir = Deno.makeTempDirSync({ prefix: "ferry-bench-snap-" });
  const file = `${dir}/vm.snap`;
  const vms: BenchVm[] = [];
  try {
    const s = vmArgs(vmm, `${dir}/src.qmp`, []);
    const src = new BenchVm(`${vmm} source`, s.cmd || qemu!, s.args, `${dir}/src.qmp`);
    vms.push(src);
    const sq = await src.qmp();
    const want = FILL_MIB * MIB / 4096;
    await src.waitProgress(want, 60000);
    await sq.call("stop");
    await sq.call("migrate-set-parameters", { "max-bandwidth": MAX_BANDWIDTH, "downtime-limit": 300 });
    let cpu0 = cpuSeconds(src.child.pid, { children: true });
    let t0 = performance.now();
    await sq.call("migrate", { uri: vmm === "ferry" ? `file:${file}` : `exec:cat > ${file}` });
    const info = await poll(
      () => sq.call("query-migrate") as Promise<Record<string, unknown>>,
      (r) => ["completed", "failed", "cancelled", "canceled"].includes(String(r.status)),
      `${vmm} save`,
    );
    run.saveMs = performance.now() - t0;
    await new Promise((r) => setTimeout(r, 100)); // let QEMU reap its `cat`
    run.saveCpuS = cpuSeconds(src.child.pid, { children: true }) - cpu0;
    if (info.status !== "completed") {
      throw new Error(`${vmm} save ${String(info.status)}: ${String(info["error-desc"] ?? "")}`);
    }
    run.fileBytes = Deno.statSync(file).size;
    if (run.fileBytes < FILL_MIB * MIB) throw new Error(`${vmm}: the file holds only ${run.fileBytes} bytes`);
    await src.close();

    const d = vmArgs(vmm, `${dir}/dst.qmp`, ["-incoming", "defer"]);
    const dst = new BenchVm(`${vmm} restore`, d.cmd || qemu!, d.args, `${dir}/dst.qmp`);
    vms.push(dst);
    const dq = await dst.qmp();
    cpu0 = cpuSeconds(dst.child.pid, { children: true });
    t0 = performance.now();
    await dq.call("migrate-incoming", { uri: vmm === "ferry" ? `file:${file}` : `exec:cat ${file}` });
    const st = await poll(
      () => dq.call("query-status") as Promise<Record<string, unknown>>,
      (r) => r.status !== "inmigrate" || dst.exited,
      `${vmm} restore`,
    );
    run.restoreMs = performance.now() - t0;
    await new Promise((r) => setTimeout(r, 100));
    run.restoreCpuS = cpuSeconds(dst.child.pid, { children: true }) - cpu0;
    if (st.status !== "paused") {
      throw new Error(`${vmm} restore ended ${String(st.status)}: ${dst.stderrTail()}`);
    }
    await dq.call("cont");
    await dst.assertGuestContinues(`${vmm} restored guest`);
    run.ok = true;
  } catch (e) {
    run.error = (e as Error).message.split("\n")[0]!;
  } finally {
    await Promise.all(vms.map((v) => v.close()));
    Deno.removeSync(dir, { recursive: true });
  }
  return run;
}

/** Runs the snapshot rows; returns report rows. */
export async function benchMigrateSnapshot(
  o: { runs: number; qemu: string | undefined },
): Promise<Record<string, string | number>[]> {
  out(
    `migrate snapshot: ${MEM_MIB} MiB probe guest with ${FILL_MIB} MiB of filled pages, paused; ferry file: vs ` +
      `QEMU 7.2 exec:cat, ${o.runs} runs per VMM, interleaved, median wall ms (start-up excluded)`,
  );
  const vmms: Vmm[] = o.qemu ? ["ferry", "qemu"] : ["ferry"];
  const runs = new Map<Vmm, SnapRun[]>(vmms.map((v) => [v, []]));
  for (let i = 0; i < o.runs; i++) {
    for (const v of vmms) {
      const r = await once(v, o.qemu);
      runs.get(v)!.push(r);
      if (!r.ok) out(`  ERROR snapshot ${v} run ${i + 1}: ${r.error}`);
    }
  }
  const med = (v: Vmm, k: "saveMs" | "restoreMs" | "saveCpuS" | "restoreCpuS" | "fileBytes") => {
    const ok = runs.get(v)!.filter((r) => r.ok);
    return ok.length ? median(ok.map((r) => r[k])) : NaN;
  };
  const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : "–");
  out("  vmm    ok   save ms  restore ms  save cpu s  restore cpu s  file MiB   each run save/restore ms");
  for (const v of vmms) {
    const rs = runs.get(v)!;
    out(
      `  ${v.padEnd(6)} ${`${rs.filter((r) => r.ok).length}/${rs.length}`.padEnd(4)} ${
        med(v, "saveMs").toFixed(0).padStart(8)
      }  ${med(v, "restoreMs").toFixed(0).padStart(10)}  ${med(v, "saveCpuS").toFixed(2).padStart(10)}  ${
        med(v, "restoreCpuS").toFixed(2).padStart(13)
      }  ${(med(v, "fileBytes") / MIB).toFixed(0).padStart(8)}   ${
        rs.map((r) => (r.ok ? `${r.saveMs.toFixed(0)}/${r.restoreMs.toFixed(0)}` : "✗")).join(" ")
      }`,
    );
  }
  const save = o.qemu ? med("ferry", "saveMs") / med("qemu", "saveMs") : NaN;
  const restore = o.qemu ? med("ferry", "restoreMs") / med("qemu", "restoreMs") : NaN;
  const saveCpu = o.qemu ? med("ferry", "saveCpuS") / med("qemu", "saveCpuS") : NaN;
  const restoreCpu = o.qemu ? med("ferry", "restoreCpuS") / med("qemu", "restoreCpuS") : NaN;
  out(
    `  ratios ferry/qemu: save ${f2(save)}, restore ${f2(restore)}; CPU seconds: save ${
      f2(saveCpu)
    }, restore ${f2(restoreCpu)} (lower is better; CPU ratios suffer less when other work shares the host)`,
  );
  if (vmms.some((v) => runs.get(v)!.some((r) => !r.ok))) Deno.exitCode = 1;
  return [{
    bench: "migrate snapshot-fill-448M",
    ferry_save_ms: Math.round(med("ferry", "saveMs")),
    ferry_restore_ms: Math.round(med("ferry", "restoreMs")),
    ...(o.qemu
      ? {
        qemu_save_ms: Math.round(med("qemu", "saveMs")),
        qemu_restore_ms: Math.round(med("qemu", "restoreMs")),
      }
      : {}),
    save_ratio: f2(save),
    restore_ratio: f2(restore),
    save_cpu_ratio: f2(saveCpu),
    restore_cpu_ratio: f2(restoreCpu),
  }];
}
