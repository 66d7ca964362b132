/**
 * The post-copy row of `deno task bench migrate` (alone: `--only postcopy`): ferry beside QEMU 7.2
 * migrating the same guest with post-copy, interleaved runs, medians, ratios.
 *
 * Guest: 256 MiB, `mode=dirty mib=192 rate=0` (rewrites its 192 MiB as fast as the vCPU can,
 * far above the link) in emulated ring 0 (`native=0`, as the other migrate rows: QEMU 7.2 does not
 * carry the PVM MSR). Link: `tcp:127.0.0.1` with the bandwidth capped at 25 MB/s (200 Mbit/s) on
 * both VMMs (`max-bandwidth`, and QEMU's `max-postcopy-bandwidth` for its post-copy phase).
 * Capabilities `postcopy-ram` on both sides and `postcopy-blocktime` on the destination;
 * `migrate-start-postcopy` as soon as the migration is `active` (both switch after their first pass
 * or sooner). Measured: total time (source `total-time`), pause (source `downtime`), the
 * destination's `postcopy-blocktime` and per-vCPU blocktime (max seen while polling every 50 ms),
 * ferry's mean fault latency (`postcopy-latency`; QEMU 7.2 has no such field), and
 * `ram.postcopy-requests`. The guest must print progress on the destination afterwards.
 * @module
 */
import { BenchVm, freePort } from "./_migrate_vm.ts";
import { ferryCommand, median, out, PROBE, qemuBaseArgs } from "./_util.ts";

const MEM_MIB = 256;
const GUEST = "mode=dirty mib=192 rate=0 native=0 interval_ms=100 cpus=1";
/** 200 Mbit/s. */
const LINK_BYTES_PER_S = 25_000_000;
const FINAL = ["completed", "failed", "cancelled", "canceled", "postcopy-paused"];

type Vmm = "ferry" | "qemu";

interface PostcopyRun {
  ok: boolean;
  error?: string;
  totalMs: number;
  downtimeMs: number;
  blocktimeMs: number;
  vcpuBlocktimeMs: number;
  latencyUs: number;
  requests: number;
}

function args(vmm: Vmm, qmp: string, extra: string[]): { cmd: string; args: string[] } {
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

async function once(vmm: Vmm, qemu: string | undefined): Promise<PostcopyRun> {
  const run: PostcopyRun = {
    ok: false,
    totalMs: NaN,
    downtimeMs: NaN,
    blocktimeMs: NaN,
    vcpuBlocktimeMs: NaN,
    latencyUs: NaN,
    requests: NaN,
  };
  const dir = Deno.makeTempDirSync({ prefix: "ferry-bench-postcopy-" });
  const uri = `tcp:127.0.0.1:${freePort()}`;
  const vms: BenchVm[] = [];
  try {
    const d = args(vmm, `${dir}/dst.qmp`, ["-incoming", "defer"]);
    const s = args(vmm, `${dir}/src.qmp`, []);
    const dst = new BenchVm(`${vmm} destination`, d.cmd || qemu!, d.args, `${dir}/dst.qmp`);
    vms.push(dst);
    const src = new BenchVm(`${vmm} source`, s.cmd || qemu!, s.args, `${dir}/src.qmp`);
    vms.push(src);
    const [sq, dq] = await Promise.all([src.qmp(), dst.qmp()]);
    const caps = (names: string[]) => ({
      capabilities: names.map((capability) => ({ capability, state: true })),
    });
    await sq.call("migrate-set-capabilities", caps(["postcopy-ram"]));
    await dq.call("migrate-set-capabilities", caps(["postcopy-ram", "postcopy-blocktime"]));
    if (vmm === "ferry") {
      // QEMU's default; ferry's is on (it would throttle the guest until precopy converges).
      await sq.call("migrate-set-capabilities", {
        capabilities: [{ capability: "auto-converge", state: false }],
      });
    }
    await dq.call("migrate-incoming", { uri });
    // The guest has written its whole area once.
    await src.waitProgress(192 * 256, 60000);
    await sq.call("migrate-set-parameters", {
      "max-bandwidth": LINK_BYTES_PER_S,
      "downtime-limit": 300,
      ...(vmm === "qemu" ? { "max-postcopy-bandwidth": LINK_BYTES_PER_S } : {}),
    });
    await sq.call("migrate", { uri });
    let info: Record<string, unknown>;
    let started = false;
    let blocktime = 0, vcpuBlocktime = 0, latencyNs = NaN;
    for (const deadline = performance.now() + 120000;;) {
      info = await sq.call("query-migrate") as Record<string, unknown>;
      if (!started && info.status === "active") {
        await sq.call("migrate-start-postcopy");
        started = true;
      }
      const di = await dq.call("query-migrate") as Record<string, unknown>;
      if (typeof di["postcopy-blocktime"] === "number") {
        blocktime = Math.max(blocktime, di["postcopy-blocktime"]);
      }
      const per = di["postcopy-vcpu-blocktime"];
      if (Array.isArray(per) && typeof per[0] === "number") vcpuBlocktime = Math.max(vcpuBlocktime, per[0]);
      if (typeof di["postcopy-latency"] === "number") latencyNs = di["postcopy-latency"];
      if (FINAL.includes(String(info.status))) break;
      if (performance.now() > deadline) throw new Error(`${vmm}: no completion within 120 s`);
      await new Promise((r) => setTimeout(r, 50));
    }
    if (info.status !== "completed") {
      throw new Error(`${vmm} migration ${String(info.status)}: ${String(info["error-desc"] ?? "")}`);
    }
    run.totalMs = info["total-time"] as number;
    run.downtimeMs = info.downtime as number;
    run.requests = (info.ram as Record<string, number>)["postcopy-requests"] ?? NaN;
    run.blocktimeMs = blocktime;
    run.vcpuBlocktimeMs = vcpuBlocktime;
    run.latencyUs = latencyNs / 1000;
    await dst.assertGuestContinues(`${vmm} destination guest`);
    run.ok = true;
  } catch (e) {
    run.error = (e as Error).message.split("\n")[0]!;
  } finally {
    await Promise.all(vms.map((v) => v.close()));
    Deno.removeSync(dir, { recursive: true });
  }
  return run;
}

/** Runs the post-copy rows; returns report rows. */
export async function benchMigratePostcopy(
  o: { runs: number; qemu: string | undefined },
): Promise<Record<string, string | number>[]> {
  out(
    `migrate post-copy: ${MEM_MIB} MiB probe guest '${GUEST}', tcp:127.0.0.1 capped at 25 MB/s (200 Mbit/s) ` +
      `on both VMMs, migrate-start-postcopy at 'active', ${o.runs} runs per VMM, interleaved, median`,
  );
  const vmms: Vmm[] = o.qemu ? ["ferry", "qemu"] : ["ferry"];
  const runs = new Map<Vmm, PostcopyRun[]>(vmms.map((v) => [v, []]));
  for (let i = 0; i < o.runs; i++) {
    for (const v of vmms) {
      const r = await once(v, o.qemu);
      runs.get(v)!.push(r);
      if (!r.ok) out(`  ERROR ${v} run ${i + 1}: ${r.error}`);
    }
  }
  type Key = Exclude<keyof PostcopyRun, "ok" | "error">;
  const med = (v: Vmm, k: Key) => {
    const ok = runs.get(v)?.filter((r) => r.ok) ?? [];
    return ok.length ? median(ok.map((r) => r[k])) : NaN;
  };
  const f0 = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : "–");
  const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : "–");
  out("  vmm    ok   total ms  pause ms  blocktime ms  vCPU blocktime ms  fault latency µs  requests");
  for (const v of vmms) {
    const rs = runs.get(v)!;
    out(
      `  ${v.padEnd(6)} ${`${rs.filter((r) => r.ok).length}/${rs.length}`.padEnd(4)} ${
        f0(med(v, "totalMs")).padStart(8)
      }  ${f0(med(v, "downtimeMs")).padStart(8)}  ${f0(med(v, "blocktimeMs")).padStart(12)}  ${
        f0(med(v, "vcpuBlocktimeMs")).padStart(17)
      }  ${f0(med(v, "latencyUs")).padStart(16)}  ${f0(med(v, "requests")).padStart(8)}`,
    );
  }
  const ratio = (k: Key) => (o.qemu ? med("ferry", k) / med("qemu", k) : NaN);
  out(
    `  ratios ferry/qemu: total ${f2(ratio("totalMs"))}, pause ${f2(ratio("downtimeMs"))}, vCPU blocktime ${
      f2(ratio("vcpuBlocktimeMs"))
    } (QEMU 7.2 reports no per-fault latency)`,
  );
  if (vmms.some((v) => runs.get(v)!.some((r) => !r.ok))) Deno.exitCode = 1;
  return [{
    bench: "migrate postcopy-dirty-192M-25MBps",
    ferry_total_ms: f0(med("ferry", "totalMs")),
    ferry_pause_ms: f0(med("ferry", "downtimeMs")),
    ferry_vcpu_blocktime_ms: f0(med("ferry", "vcpuBlocktimeMs")),
    ferry_fault_latency_us: f0(med("ferry", "latencyUs")),
    ...(o.qemu
      ? {
        qemu_total_ms: f0(med("qemu", "totalMs")),
        qemu_pause_ms: f0(med("qemu", "downtimeMs")),
        qemu_vcpu_blocktime_ms: f0(med("qemu", "vcpuBlocktimeMs")),
      }
      : {}),
    total_ratio: f2(ratio("totalMs")),
    pause_ratio: f2(ratio("downtimeMs")),
  }];
}
