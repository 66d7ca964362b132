/**
 * `deno task bench boot`: ferry beside QEMU (Debian, `-enable-kvm`) on the same probe guest,
 * interleaved in one run, medians, ratios:
 *
 * - boot: time from process start to `PROBE READY` (256 MiB, 1 vCPU);
 * - memory: resident set size and threads of an idle guest (`-m 1G`) at `-smp 1/2/4/8`, and the
 *   growth per added vCPU (from `-smp 1` to `-smp 8`);
 * - exits: the guest's `mode=exits` round trip of a port write (0x80) and of an MMIO read (PCIe
 *   ECAM), both handled in user space by either VMM, as ns per exit and exits per second, at
 *   `-smp 1`, at `-smp 2` on vCPU 0, and at `-smp 2` on vCPU 1 while vCPU 0 computes.
 * @module
 */
import { ferryCommand, median, out, PROBE, qemuBaseArgs, qemuBinary, rssKiB, Spawned } from "./_util.ts";

type Row = Record<string, string | number>;

interface Vmm {
  name: "ferry" | "qemu";
  cmd: string;
  /** Arguments for a guest of `mib` MiB, `smp` vCPUs and this guest command line. */
  args: (mib: number, smp: number, append: string) => string[];
}

function vmms(): Vmm[] {
  const list: Vmm[] = [];
  const f = ferryCommand([]);
  list.push({
    name: "ferry",
    cmd: f.cmd,
    args: (mib, smp, append) => [
      ...f.args,
      ...["-machine", "q35", "-m", `${mib}M`, "-smp", `${smp}`, "-kernel", PROBE, "-append", append],
      ...["-serial", "stdio"],
    ],
  });
  const q = qemuBinary();
  if (q) {
    list.push({
      name: "qemu",
      cmd: q,
      args: (mib, smp, append) => [
        ...qemuBaseArgs(),
        ...["-serial", "stdio", "-m", `${mib}M`, "-smp", `${smp}`, "-kernel", PROBE, "-append", append],
      ],
    });
  }
  return list;
}

function threads(pid: number): number {
  try {
    const m = Deno.readTextFileSync(`/proc/${pid}/status`).match(/Threads:\s+(\d+)/);
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

interface Sample {
  readyMs: number;
  rssKiB: number;
  threads: number;
  lines: string[];
}

/** Starts `vmm`, waits for `until` on the serial console, measures, kills it. */
async function once(vmm: Vmm, args: string[], until: RegExp, settleMs: number): Promise<Sample> {
  const t0 = performance.now();
  const p = new Spawned(vmm.cmd, args);
  try {
    await p.waitLine(/PROBE READY/, 60000);
    const readyMs = performance.now() - t0;
    await p.waitLine(until, 120000);
    await new Promise((r) => setTimeout(r, settleMs));
    return { readyMs, rssKiB: rssKiB(p.child.pid), threads: threads(p.child.pid), lines: [...p.lines] };
  } finally {
    await p.kill();
  }
}

const mib = (kib: number) => +(kib / 1024).toFixed(1);
const ratio = (a: number, b: number) => +(a / b).toFixed(2);

async function benchReady(list: Vmm[], runs: number): Promise<Row[]> {
  const ms = new Map<string, number[]>(list.map((v) => [v.name, []]));
  for (let i = 0; i < runs; i++) {
    for (const v of list) {
      const s = await once(v, v.args(256, 1, "mode=idle interval_ms=1000"), /PROBE READY/, 0);
      ms.get(v.name)!.push(s.readyMs);
    }
  }
  const f = median(ms.get("ferry")!), q = (ms.get("qemu") ?? []).length ? median(ms.get("qemu")!) : NaN;
  out(`boot: probe guest, 256 MiB, 1 vCPU, ${runs} runs each, interleaved (median)`);
  out(`  ferry ${f.toFixed(0).padStart(6)} ms to READY   qemu ${q.toFixed(0).padStart(6)} ms`);
  out(`  ratio ferry/qemu ${(f / q).toFixed(2)} (goal ≤ 1)`);
  return [{ bench: "boot to READY", ferry_ms: Math.round(f), qemu_ms: Math.round(q), ratio: ratio(f, q) }];
}

async function benchMemory(list: Vmm[], runs: number): Promise<Row[]> {
  const smps = [1, 2, 4, 8];
  const rss = new Map<string, number[]>(), thr = new Map<string, number[]>();
  const floor: number[] = [];
  const floorVmm: Vmm = {
    name: "ferry",
    cmd: Deno.execPath(),
    args: () => ["run", "-A", "--no-config", new URL("./_runtime_floor.ts", import.meta.url).pathname],
  };
  for (let i = 0; i < runs; i++) {
    floor.push((await once(floorVmm, floorVmm.args(0, 1, ""), /PROBE PROGRESS/, 1000)).rssKiB);
    for (const smp of smps) {
      for (const v of list) {
        // Progress lines from every vCPU: all of them are up and have run.
        const s = await once(
          v,
          v.args(1024, smp, `mode=idle interval_ms=200 cpus=${smp}`),
          /PROBE PROGRESS/,
          1000,
        );
        const k = `${v.name}/${smp}`;
        rss.set(k, [...(rss.get(k) ?? []), s.rssKiB]);
        thr.set(k, [...(thr.get(k) ?? []), s.threads]);
      }
    }
  }
  const rows: Row[] = [];
  out(`boot memory: idle probe guest, -m 1G, ${runs} runs each, interleaved (median RSS)`);
  for (const smp of smps) {
    const f = median(rss.get(`ferry/${smp}`)!), ft = median(thr.get(`ferry/${smp}`)!);
    const q = rss.has(`qemu/${smp}`) ? median(rss.get(`qemu/${smp}`)!) : NaN;
    const qt = thr.has(`qemu/${smp}`) ? median(thr.get(`qemu/${smp}`)!) : NaN;
    const goal = smp === 1 ? 1.3 : smp === 8 ? 1.5 : undefined;
    out(
      `  -smp ${smp}: ferry ${mib(f).toFixed(1).padStart(6)} MiB ${String(ft).padStart(3)} threads   ` +
        `qemu ${mib(q).toFixed(1).padStart(6)} MiB ${String(qt).padStart(3)} threads   ratio ${
          (f / q).toFixed(2)
        }` +
        (goal ? ` (goal ≤ ${goal})` : ""),
    );
    rows.push({
      bench: `boot RSS -smp ${smp}`,
      ferry_mib: mib(f),
      qemu_mib: mib(q),
      ratio: ratio(f, q),
      ferry_threads: ft,
      qemu_threads: qt,
    });
  }
  const fl = median(floor), q1 = rss.has("qemu/1") ? median(rss.get("qemu/1")!) : NaN;
  out(
    `  runtime floor (deno run, one Worker, one FFI symbol, no ferry code): ${mib(fl).toFixed(1)} MiB, ` +
      `${(fl / q1).toFixed(2)}× qemu -smp 1 (bench/_runtime_floor.ts)`,
  );
  rows.push({ bench: "boot RSS runtime floor", deno_mib: mib(fl), qemu_mib: mib(q1), ratio: ratio(fl, q1) });
  const growth = (name: string) => {
    const r1 = rss.get(`${name}/1`), r8 = rss.get(`${name}/8`);
    return r1 && r8 ? (median(r8) - median(r1)) / 7 / 1024 : NaN;
  };
  const fg = growth("ferry"), qg = growth("qemu");
  out(
    `  growth per added vCPU (-smp 1 → 8): ferry ${fg.toFixed(2)} MiB, qemu ${qg.toFixed(2)} MiB (goal ≤ 2)`,
  );
  rows.push({ bench: "boot RSS per added vCPU", ferry_mib: +fg.toFixed(2), qemu_mib: +qg.toFixed(2) });
  return rows;
}

/**
 * The exit round trip at `-smp smp`, made by vCPU `cpu` (the probe's `exits_cpu`). At `-smp 1`
 * ferry's vCPU Worker runs the vCPU and answers on the same thread; with more vCPUs each has a run
 * thread and an exit is handed to the Worker and back. With `cpu` > 0, vCPU 0 computes in the
 * guest meanwhile (no progress line within the run).
 */
async function benchExits(list: Vmm[], runs: number, smp: number, cpu = 0): Promise<Row[]> {
  const n = 1000, rounds = 5;
  const guest = cpu === 0 ? "cpus=1" : `cpus=${smp} exits_cpu=${cpu} interval_ms=600000`;
  const pio = new Map<string, number[]>(list.map((v) => [v.name, []]));
  const mmio = new Map<string, number[]>(list.map((v) => [v.name, []]));
  for (let i = 0; i < runs; i++) {
    for (const v of list) {
      const append = `mode=exits exits=${n} rounds=${rounds} ${guest}`;
      const s = await once(v, v.args(256, smp, append), /PROBE EXIT /, 0);
      for (const l of s.lines) {
        const m = l.match(/PROBE EXITS .*pio_ns=(\d+) mmio_ns=(\d+)/);
        if (!m) continue;
        pio.get(v.name)!.push(Number(m[1]));
        mmio.get(v.name)!.push(Number(m[2]));
      }
    }
  }
  out(
    `boot exits, -smp ${smp}: ${n} port writes + ${n} MMIO reads per round on vCPU ${cpu}` +
      `${cpu > 0 ? " (vCPU 0 computing)" : ""}, ${rounds} rounds × ${runs} runs (median)`,
  );
  const rows: Row[] = [];
  const suffix = (smp === 1 ? "" : ` -smp ${smp}`) + (cpu === 0 ? "" : ` on vCPU ${cpu}`);
  for (const [kind, m] of [["pio", pio], ["mmio", mmio]] as const) {
    const f = median(m.get("ferry")!), q = (m.get("qemu") ?? []).length ? median(m.get("qemu")!) : NaN;
    out(
      `  ${kind.padEnd(4)}: ferry ${(f / 1000).toFixed(1).padStart(6)} µs/exit ${
        Math.round(1e9 / f)
      } exits/s   ` +
        `qemu ${(q / 1000).toFixed(1).padStart(6)} µs/exit ${Math.round(1e9 / q)} exits/s   ` +
        `round trip ferry/qemu ${(f / q).toFixed(2)}${smp === 1 ? " (goal ≤ 1.5)" : ""}`,
    );
    rows.push({
      bench: `boot exit round trip ${kind}${suffix}`,
      ferry_us: +(f / 1000).toFixed(1),
      qemu_us: +(q / 1000).toFixed(1),
      ratio: ratio(f, q),
      ferry_exits_per_s: Math.round(1e9 / f),
      qemu_exits_per_s: Math.round(1e9 / q),
    });
  }
  return rows;
}

/** Runs the boot benchmark (READY time, memory per -smp, exit round trip); returns report rows. */
export async function benchBoot(runs = 3): Promise<Row[]> {
  const list = vmms();
  if (list.length < 2) out("  qemu not installed (apt-get install qemu-system-x86): no ratios");
  const rows = [...await benchReady(list, Math.max(runs, 5))];
  rows.push(...await benchMemory(list, runs));
  rows.push(...await benchExits(list, runs, 1));
  rows.push(...await benchExits(list, runs, 2));
  rows.push(...await benchExits(list, runs, 2, 1));
  return rows;
}
