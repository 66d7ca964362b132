/**
 * The TLS rows of `deno task bench migrate` (alone: `--only tls`): migration throughput of a guest
 * whose RAM is really filled, ferry plaintext vs ferry TLS vs QEMU 7.2 TLS (and QEMU plaintext for
 * reference), over `tcp:127.0.0.1`, interleaved runs, medians, ratios.
 *
 * Guest: 512 MiB, `mode=dirty mib=448 rate=0` until it has written every page of its 448 MiB work
 * area once (every page then holds data, so every page is sent with its 4 KiB), then QMP `stop`:
 * one precopy pass of a paused guest measures the data path, not convergence. Both VMMs use
 * `-object tls-creds-x509` with certificates made by `openssl` (tests/_fixture/tls.ts), `verify-peer`
 * on (QEMU's default: the source presents a client certificate), `-incoming defer` +
 * `migrate-set-parameters tls-creds` + `migrate-incoming` on the destination, `max-bandwidth`
 * 64 GiB/s on both (QEMU 7.2 defaults to 128 MiB/s). Throughput = `ram.transferred` / the wall
 * time from `migrate` until `query-migrate` (polled every 20 ms) says `completed`. After `completed` the destination is `cont`inued and must print progress.
 *
 * Goals (issue 10): ferry TLS costs ≤ 25 % of ferry's plaintext throughput; ferry TLS ≥ 2× QEMU TLS.
 * Last, the floor Deno's own TLS sets (`_tls_floor.ts`: a loopback transfer in the bench process,
 * plaintext and TLS): its extra CPU per MiB against ferry's plaintext CPU per MiB bounds what a
 * CPU-bound host (both ends on these two cores) lets TLS cost at least.
 * @module
 */
import { BenchVm, freePort } from "./_migrate_vm.ts";
import { denoTlsFloor } from "./_tls_floor.ts";
import { cpuSeconds, ferryCommand, median, out, PROBE, qemuBaseArgs } from "./_util.ts";
import { makeTlsDirs } from "../tests/_fixture/tls.ts";

const MIB = 1024 * 1024;
const MEM_MIB = 512;
const FILL_MIB = 448;
const GUEST = `mode=dirty mib=${FILL_MIB} rate=0 native=0 interval_ms=100 cpus=1`;
const MAX_BANDWIDTH = 64 * 1024 * MIB;

/** `ferry tls-deno`: `verify-peer=off` and no `tls-hostname`, so both ends use Deno's own TLS. */
type Variant = "ferry plain" | "ferry tls" | "ferry tls-deno" | "qemu tls" | "qemu plain";

interface TlsRun {
  ok: boolean;
  error?: string;
  mbps: number;
  /** MiB moved per CPU second of source + destination (robust when the host is busy). */
  mibPerCpuS: number;
  totalMs: number;
  bytes: number;
}

function args(vmm: "ferry" | "qemu", qmp: string, extra: string[]): { cmd: string; args: string[] } {
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

async function once(
  variant: Variant,
  qemu: string | undefined,
  pki: { server: string; client: string },
): Promise<TlsRun> {
  const run: TlsRun = { ok: false, mbps: NaN, mibPerCpuS: NaN, totalMs: NaN, bytes: NaN };
  const vmm = variant.startsWith("ferry") ? "ferry" : "qemu";
  const tls = variant.includes("tls");
  const denoTls = variant === "ferry tls-deno";
  const dir = Deno.makeTempDirSync({ prefix: "ferry-bench-tls-" });
  const uri = `tcp:127.0.0.1:${freePort()}`;
  const vms: BenchVm[] = [];
  try {
    const obj = (endpoint: string, d: string) =>
      tls
        ? [
          "-object",
          `tls-creds-x509,id=tls0,dir=${d},endpoint=${endpoint}${
            denoTls && endpoint === "server" ? ",verify-peer=off" : ""
          }`,
        ]
        : [];
    const d = args(vmm, `${dir}/dst.qmp`, [...obj("server", pki.server), "-incoming", "defer"]);
    const s = args(vmm, `${dir}/src.qmp`, obj("client", pki.client));
    const dst = new BenchVm(`${variant} destination`, d.cmd || qemu!, d.args, `${dir}/dst.qmp`);
    vms.push(dst);
    const src = new BenchVm(`${variant} source`, s.cmd || qemu!, s.args, `${dir}/src.qmp`);
    vms.push(src);
    const [sq, dq] = await Promise.all([src.qmp(), dst.qmp()]);
    if (tls) await dq.call("migrate-set-parameters", { "tls-creds": "tls0" });
    await dq.call("migrate-incoming", { uri });
    // Fill: every page of the work area written once, then stop the guest.
    const want = FILL_MIB * MIB / 4096;
    await src.waitProgress(want, 60000);
    await sq.call("stop");
    await sq.call("migrate-set-parameters", {
      "max-bandwidth": MAX_BANDWIDTH,
      "downtime-limit": 300,
      ...(tls ? { "tls-creds": "tls0", ...(denoTls ? {} : { "tls-hostname": "localhost" }) } : {}),
    });
    const cpu0 = cpuSeconds(src.child.pid) + cpuSeconds(dst.child.pid);
    const t0 = performance.now();
    await sq.call("migrate", { uri });
    let info: Record<string, unknown>;
    for (const deadline = performance.now() + 120000;;) {
      info = await sq.call("query-migrate") as Record<string, unknown>;
      if (["completed", "failed", "cancelled", "canceled"].includes(String(info.status))) break;
      if (performance.now() > deadline) throw new Error(`${variant}: no completion within 120 s`);
      await new Promise((r) => setTimeout(r, 20));
    }
    if (info.status !== "completed") {
      throw new Error(`${variant} migration ${String(info.status)}: ${String(info["error-desc"] ?? "")}`);
    }
    const ram = info.ram as Record<string, number>;
    // Wall time from `migrate` to `completed` seen (20 ms polls), the same clock for both VMMs:
    // QEMU 7.2 reports total-time 0 for a stopped guest.
    run.totalMs = performance.now() - t0;
    const cpu = cpuSeconds(src.child.pid) + cpuSeconds(dst.child.pid) - cpu0;
    run.bytes = ram.transferred!;
    run.mbps = run.bytes / MIB / (run.totalMs / 1000);
    run.mibPerCpuS = run.bytes / MIB / cpu;
    if (run.bytes < FILL_MIB * MIB) throw new Error(`${variant}: only ${run.bytes} bytes sent`);
    // The guest continues on the destination.
    await new Promise((r) => setTimeout(r, 100));
    await dq.call("cont");
    await dst.assertGuestContinues(`${variant} destination guest`);
    run.ok = true;
  } catch (e) {
    run.error = (e as Error).message.split("\n")[0]!;
  } finally {
    await Promise.all(vms.map((v) => v.close()));
    Deno.removeSync(dir, { recursive: true });
  }
  return run;
}

/** Runs the TLS rows; returns report rows. */
export async function benchMigrateTls(
  o: { runs: number; qemu: string | undefined },
): Promise<Record<string, string | number>[]> {
  out(
    `migrate TLS: ${MEM_MIB} MiB probe guest with ${FILL_MIB} MiB of filled pages, paused, over tcp:127.0.0.1, ` +
      `${o.runs} runs per variant, interleaved, median MiB/s = ram.transferred / wall time migrate→completed`,
  );
  const work = Deno.makeTempDirSync({ prefix: "ferry-bench-pki-" });
  const pki = await makeTlsDirs(work);
  const variants: Variant[] = o.qemu
    ? ["ferry plain", "ferry tls", "ferry tls-deno", "qemu tls", "qemu plain"]
    : ["ferry plain", "ferry tls", "ferry tls-deno"];
  const runs = new Map<Variant, TlsRun[]>(variants.map((v) => [v, []]));
  let floor: { plain: number; tls: number };
  try {
    for (let i = 0; i < o.runs; i++) {
      for (const v of variants) {
        const r = await once(v, o.qemu, pki);
        runs.get(v)!.push(r);
        if (!r.ok) out(`  ERROR ${v} run ${i + 1}: ${r.error}`);
      }
    }
    floor = await denoTlsFloor(pki.server);
  } finally {
    Deno.removeSync(work, { recursive: true });
  }
  const med = (v: Variant, k: "mbps" | "mibPerCpuS" = "mbps") => {
    const ok = runs.get(v)!.filter((r) => r.ok);
    return ok.length ? median(ok.map((r) => r[k])) : NaN;
  };
  const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : "–");
  out("  variant        ok   MiB/s (median)  MiB per CPU-s (median)   each run MiB/s");
  for (const v of variants) {
    const rs = runs.get(v)!;
    out(
      `  ${v.padEnd(13)} ${`${rs.filter((r) => r.ok).length}/${rs.length}`.padEnd(4)} ${
        med(v).toFixed(0).padStart(10)
      }  ${med(v, "mibPerCpuS").toFixed(0).padStart(16)}         ${
        rs.map((r) => (r.ok ? r.mbps.toFixed(0) : "✗")).join(" ")
      }`,
    );
  }
  const tlsVsPlain = med("ferry tls") / med("ferry plain");
  const ferryVsQemu = o.qemu ? med("ferry tls") / med("qemu tls") : NaN;
  const qemuCost = o.qemu ? med("qemu tls") / med("qemu plain") : NaN;
  const cpuTls = med("ferry tls", "mibPerCpuS") / med("ferry plain", "mibPerCpuS");
  const cpuVsQemu = o.qemu ? med("ferry tls", "mibPerCpuS") / med("qemu tls", "mibPerCpuS") : NaN;
  out(
    `  ratios: ferry tls / ferry plain ${f2(tlsVsPlain)} (TLS costs ${
      Number.isFinite(tlsVsPlain) ? ((1 - tlsVsPlain) * 100).toFixed(0) : "–"
    } %; goal ≤ 25 %: ${tlsVsPlain >= 0.75 ? "met" : "NOT met"}); ferry tls / qemu tls ${
      f2(ferryVsQemu)
    } (goal ≥ 2: ${ferryVsQemu >= 2 ? "met" : o.qemu ? "NOT met" : "n/a"}); qemu tls / qemu plain ${
      f2(qemuCost)
    }`,
  );
  out(
    `  per CPU second: ferry tls / ferry plain ${f2(cpuTls)}, ferry tls / qemu tls ${f2(cpuVsQemu)} ` +
      "(wall-clock ratios suffer when other work shares the host; CPU ratios less so)",
  );
  // What Deno's TLS alone allows: its extra CPU per MiB on top of ferry's plaintext CPU per MiB.
  const extra = 1 / floor.tls - 1 / floor.plain;
  const ferryPlain = 1 / med("ferry plain", "mibPerCpuS");
  const best = ferryPlain / (ferryPlain + extra);
  out(
    `  Deno's TLS alone (loopback in one process, no ferry code): ${
      floor.plain.toFixed(0)
    } MiB per CPU-s plain, ` +
      `${floor.tls.toFixed(0)} with TLS, i.e. +${
        (extra * 1000).toFixed(2)
      } ms CPU per MiB; with ferry plain at ` +
      `${(ferryPlain * 1000).toFixed(2)} ms per MiB, a CPU-bound host allows ferry tls / ferry plain ≤ ${
        f2(best)
      } ` +
      `(TLS cost ≥ ${Number.isFinite(best) ? ((1 - best) * 100).toFixed(0) : "–"} %)`,
  );
  out(
    `  ferry tls-deno (verify-peer=off, no tls-hostname: Deno.listenTls and Deno.connectTls, no node:tls) / ferry ` +
      `plain ${f2(med("ferry tls-deno") / med("ferry plain"))}, / qemu tls ${
        o.qemu ? f2(med("ferry tls-deno") / med("qemu tls")) : "–"
      }`,
  );
  if (variants.some((v) => runs.get(v)!.some((r) => !r.ok))) Deno.exitCode = 1;
  return [{
    bench: "migrate tls-fill-448M-tcp",
    ferry_plain_mibps: Math.round(med("ferry plain")),
    ferry_tls_mibps: Math.round(med("ferry tls")),
    ...(o.qemu
      ? { qemu_tls_mibps: Math.round(med("qemu tls")), qemu_plain_mibps: Math.round(med("qemu plain")) }
      : {}),
    tls_vs_plain_ratio: f2(tlsVsPlain),
    tls_vs_plain_cpu_ratio: f2(cpuTls),
    ferry_tls_vs_qemu_tls_cpu_ratio: f2(cpuVsQemu),
    ferry_tls_vs_qemu_tls_ratio: f2(ferryVsQemu),
    goal_tls_cost: tlsVsPlain >= 0.75 ? "met" : "NOT met",
    goal_vs_qemu: ferryVsQemu >= 2 ? "met" : "NOT met",
  }];
}
