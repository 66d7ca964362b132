/**
 * `deno task bench io [--runs N] [--cache writeback,direct] [--only WORDS] [--qemu PATH|none]
 * [--verbose=1]`:
 * virtio-blk and virtio-net throughput, ferry beside QEMU, on the same probe guest (1 vCPU,
 * 256 MiB, `zig-out/guest/probe.elf`, its polled drivers: PROTOCOL.md `mode=blk` / `mode=net`).
 *
 * Block (one temp raw image of 64 MiB in /tmp, created with truncate, shared by every run): for each
 * cache mode — `writeback` (ferry `direct=off`, QEMU `cache=writeback`) and `direct` (ferry
 * `direct=on`, O_DIRECT; QEMU `cache=none`), both sides on io_uring (ferry always, QEMU
 * `aio=io_uring`) — three request shapes: 64 KiB × depth 32 (sequential throughput, MiB/s),
 * 4 KiB × depth 1 and 4 KiB × depth 32 (IOPS); the guest keeps `depth` requests in flight,
 * refilling each as it completes. The probe writes its
 * area (`blk_mib`, same on both VMMs) then flushes, then reads it back and verifies, and prints the
 * write and read rate of each round, round after round until the run has what it measures (then
 * the VM is killed). The probe's offsets are sequential (it has no random pattern): the 4 KiB shapes
 * measure the per-request cost, not seek behaviour.
 *
 * Warm-up (as fio's `ramp_time`), the same for both VMMs and every group: the first round (burst)
 * and every one that ends within {@linkcode RAMP_MS} of it are discarded; a run's value is the median
 * of the rounds after that, at least {@linkcode MEASURE_ROUNDS} of them over at least
 * {@linkcode MEASURE_MS}. ferry's JIT compiles its hot I/O functions during its first ~1 s of I/O
 * (docs/io-performance.md): without a ramp the rows measured the warm-up, not the I/O path.
 *
 * Net (a network namespace with one tap, created and deleted here; skipped with the reason when
 * /dev/net/tun or `ip netns` is unavailable): TX = the guest's own rate over bursts of 50000
 * broadcast frames (`mode=net net_burst=50000`, ramp as for blk, median of the bursts after it). RX = a
 * python3 packet socket in the namespace sends 60-byte UDP frames to the guest's MAC into the tap
 * as fast as it can for a few seconds; the rate is the growth of the guest's own received-frames
 * count (`NET TX … rx=`) between two of its lines inside the blast window after its first
 * {@linkcode RAMP_MS} (the ramp), over the host time between them. The blaster's offered and refused rates are printed: when it had no frame refused
 * (tap queue never full), it and not the VMM set the RX rate.
 *
 * Efficiency beside speed (every group): `… per CPU s` rows are requests (or frames) per second of
 * host CPU the VMM process used in its threads other than its vCPU threads (_io_vm.ts
 * hostCpuSeconds: the I/O path, and exit handling where it runs outside a vCPU thread, as ferry's
 * vCPU Worker does; a vCPU thread's own host time cannot be told from its guest time on this host,
 * so it is left out for both VMMs) over the measured rounds (from the last line of the ramp to the
 * last measured line).
 * They move much less with the host's load than the rates do, which on a shared 2-core host swing by
 * ±50–150% between runs.
 *
 * `--only WORDS` keeps the groups whose id contains every word (ids: `blk-<writeback|direct>-<seq64k-d32|
 * 4k-d1|4k-d32>`, `net-tx`, `net-rx`; e.g. `--only blk,direct`); `--verbose=1` (with `=`: main.ts
 * takes the next argument as an option's value) prints every run's value under the table.
 *
 * Runs alternate ferry and QEMU (QEMU first on odd runs); each value printed is the median over the
 * runs, with the ratio ferry/QEMU (every metric is higher-is-better: > 1 means ferry is faster).
 * Every process is killed in `finally` (and on Ctrl-C), the namespace and image deleted.
 * @module
 */
import { ferryCommand, median, out, PROBE, qemuBaseArgs, qemuBinary } from "./_util.ts";
import {
  blasterSkipReason,
  createIoNetns,
  type IoNetns,
  removeNetnsSync,
  startBlaster,
  type TimedLine,
  TimedProcess,
} from "./_io_vm.ts";

type Vmm = "ferry" | "qemu";
type Cache = "writeback" | "direct";
type Row = Record<string, string | number>;

const GUEST_MAC = "52:54:00:12:34:56";
const IMAGE_MIB = 64;
const NET_TX_BURST = 50000;
/**
 * Warm-up discarded on both VMMs (ms): rounds (bursts) that end within this time of the first one
 * are not measured, nor RX frames in the blast's first RAMP_MS.
 */
export const RAMP_MS = 2000;
/** After the ramp, a run measures at least this many rounds (bursts)… */
export const MEASURE_ROUNDS = 5;
/** …over at least this long (ms). */
export const MEASURE_MS = 1000;
/** RX: how long the blast runs after the ramp (s). */
const BLAST_SECS = 2.5;
const BAD =
  /PROBE (BLK |NET )?(TIMEOUT|ERROR|EXCEPTION)|VERIFY FAIL|READONLY|BLK WRITE status|BLK (READ|FLUSH) status/;

/** Options from the command line. */
export interface IoOptions {
  runs: number;
  caches: Cache[];
  only: string[];
  /** QEMU binary; undefined: ferry only. */
  qemu: string | undefined;
  /** Print every run's value under the table. */
  verbose: boolean;
}

/** Parses `--runs`, `--cache`, `--only`, `--qemu PATH|none` (migrate's `--rate`/`--bandwidth` are ignored). */
export function ioOptions(flags: Record<string, string>): IoOptions {
  const o: IoOptions = {
    runs: 3,
    caches: ["writeback", "direct"],
    only: [],
    qemu: qemuBinary(),
    verbose: false,
  };
  for (const [k, v] of Object.entries(flags)) {
    if (k === "runs") o.runs = Math.max(1, Number.parseInt(v, 10) || 0);
    else if (k === "cache") {
      const c = v.split(",").filter((x) => x);
      const bad = c.find((x) => x !== "writeback" && x !== "direct");
      if (bad !== undefined || c.length === 0) {
        throw new Error(`Cannot use --cache '${v}': give writeback, direct or writeback,direct`);
      }
      o.caches = c as Cache[];
    } else if (k === "only") o.only = v.split(",").filter((x) => x);
    else if (k === "qemu") o.qemu = v === "none" ? undefined : v;
    else if (k === "verbose") o.verbose = v !== "0" && v !== "false";
    else if (k === "rate" || k === "bandwidth") continue; // migrate's
    else {throw new Error(
        `Cannot use option '--${k}' with io: choose from --runs, --cache, --only, --qemu, --verbose`,
      );}
  }
  if (o.qemu !== undefined) {
    try {
      Deno.statSync(o.qemu);
    } catch {
      throw new Error(`Cannot use --qemu '${o.qemu}': no such file (give a path, or none)`);
    }
  }
  return o;
}

// ------------------------------------------------------------------ what is measured
interface Shape {
  id: string;
  label: string;
  reqKiB: number;
  depth: number;
  unit: "MiB/s" | "IOPS";
  /** `blk_mib` per cache mode (smaller where a run would take seconds: O_DIRECT at depth 1). */
  mib: Record<Cache, number>;
}

const SHAPES: Shape[] = [
  {
    id: "seq64k-d32",
    label: "64K×32",
    reqKiB: 64,
    depth: 32,
    unit: "MiB/s",
    mib: { writeback: 32, direct: 32 },
  },
  { id: "4k-d1", label: "4K×1", reqKiB: 4, depth: 1, unit: "IOPS", mib: { writeback: 8, direct: 2 } },
  { id: "4k-d32", label: "4K×32", reqKiB: 4, depth: 32, unit: "IOPS", mib: { writeback: 16, direct: 8 } },
];

/** What each side runs with (printed above the table). */
const SIDES = [
  "  ferry  blk: io_uring from the I/O Worker (direct=off: page cache; direct=on: O_DIRECT), flush = fdatasync;",
  "         net: tap, readv/writev straight from guest RAM in the I/O Worker",
  "  qemu   blk: -drive cache=writeback|none,aio=io_uring (writeback ↔ ferry direct=off, none ↔ direct=on);",
  "         net: -netdev tap (vhost off: userspace virtio-net, like ferry)",
  "  guest  blk ×N rows: N requests in flight, each completion refilled at once (sliding window, PROTOCOL.md)",
  "  per CPU s: host CPU of the VMM's threads other than vCPU threads (both VMMs; /proc utime+stime)",
];

/** Values of one run: metric name → value. */
type RunResult = Record<string, number>;

interface Group {
  id: string;
  /** Metric names in print order, with units and labels. */
  metrics: { name: string; label: string; unit: string }[];
  run(vmm: Vmm): Promise<RunResult>;
  results: Record<Vmm, RunResult[]>;
  errors: Record<Vmm, string[]>;
  notes: string[];
  /** RX only: the blaster's offered and refused frames per second, one per run. */
  blaster?: Record<Vmm, { offered: number; refused: number }[]>;
}

// ------------------------------------------------------------------ running one VM
interface Ctx {
  qemu: string | undefined;
  image: string;
  net: IoNetns | undefined;
  live: Set<TimedProcess>;
}

function vmCommand(
  ctx: Ctx,
  vmm: Vmm,
  append: string,
  dev: { ferry: string[]; qemu: string[] },
  inNetns: boolean,
): { cmd: string; args: string[] } {
  const guest = ["-m", "256M", "-smp", "1", "-kernel", PROBE, "-append", append, "-serial", "stdio"];
  const c = vmm === "ferry"
    ? ferryCommand(["-machine", "q35", ...guest, ...dev.ferry])
    : { cmd: ctx.qemu!, args: [...qemuBaseArgs(), "-no-user-config", ...guest, ...dev.qemu] };
  if (!inNetns) return c;
  return { cmd: "ip", args: ["netns", "exec", ctx.net!.ns, c.cmd, ...c.args] };
}

async function withVm<T>(
  ctx: Ctx,
  c: { cmd: string; args: string[] },
  body: (vm: TimedProcess) => Promise<T>,
): Promise<T> {
  const vm = new TimedProcess(c.cmd, c.args, CPU_AT);
  ctx.live.add(vm);
  try {
    return await body(vm);
  } finally {
    await vm.kill();
    ctx.live.delete(vm);
  }
}

function assertClean(vm: TimedProcess): void {
  const bad = vm.lines.find((l) => BAD.test(l.text));
  if (bad) throw new Error(`guest reported '${bad.text}'`);
}

/** The guest lines at which the VMM's host CPU time is sampled (TimedLine.cpu). */
const CPU_AT = /PROBE (BLK RATE|NET RATE|NET TX seq)/;

/**
 * Operations per host CPU second of the VMM (its threads other than vCPU threads, hostCpuSeconds)
 * between two sampled lines; NaN when the time did not advance by at least 2 clock ticks.
 */
function perCpuSecond(ops: number, a: TimedLine, b: TimedLine): number {
  const d = (b.cpu ?? NaN) - (a.cpu ?? NaN);
  return d >= 0.02 ? ops / d : NaN;
}

/**
 * Waits for the guest's per-round lines matching `re` and applies the ramp (module doc): returns
 * the last line of the ramp (`start`, where the CPU count begins) and the measured lines after it.
 * @throws {Error} after `timeoutMs`, or when the VM exits first
 */
export async function rampThenMeasure(
  vm: Pick<TimedProcess, "waitFor">,
  re: RegExp,
  timeoutMs: number,
): Promise<{ start: TimedLine; measured: TimedLine[] }> {
  const deadline = performance.now() + timeoutMs;
  let from = 0, first: TimedLine | undefined, start: TimedLine | undefined;
  const measured: TimedLine[] = [];
  for (;;) {
    const { index, line } = await vm.waitFor(re, Math.max(1, deadline - performance.now()), from);
    from = index + 1;
    if (!first || !start || line.t - first.t < RAMP_MS) {
      first ??= line;
      start = line;
      continue;
    }
    measured.push(line);
    if (measured.length >= MEASURE_ROUNDS && line.t - start.t >= MEASURE_MS) return { start, measured };
  }
}

function blkGroup(ctx: Ctx, cache: Cache, s: Shape): Group {
  const mib = s.mib[cache];
  const append =
    `mode=blk blk_mib=${mib} blk_req_kib=${s.reqKiB} blk_depth=${s.depth} rounds=0 interval_ms=1000 cpus=1`;
  const dev = {
    ferry: [
      "-drive",
      `file=${ctx.image},id=d0,readonly=off,direct=${cache === "direct" ? "on" : "off"}`,
      "-device",
      "virtio-blk-pci,drive=d0,id=d0,bus=pcie.0,addr=0x2",
    ],
    qemu: [
      "-drive",
      `file=${ctx.image},if=none,id=d0,format=raw,cache=${
        cache === "direct" ? "none" : "writeback"
      },aio=io_uring`,
      "-device",
      "virtio-blk-pci,drive=d0,disable-legacy=on,addr=0x2",
    ],
  };
  const tag = `blk ${cache === "writeback" ? "wb" : "direct"} ${s.label}`;
  return {
    id: `blk-${cache}-${s.id}`,
    metrics: [
      { name: "write", label: `${tag} write`, unit: s.unit },
      { name: "read", label: `${tag} read`, unit: s.unit },
      { name: "cpu", label: `${tag} per CPU s`, unit: "req" },
    ],
    results: { ferry: [], qemu: [] },
    errors: { ferry: [], qemu: [] },
    notes: [`blk_mib=${mib}`],
    run: (vmm) =>
      withVm(ctx, vmCommand(ctx, vmm, append, dev, false), async (vm) => {
        const { start, measured } = await rampThenMeasure(vm, /PROBE BLK RATE/, 120_000);
        assertClean(vm);
        const w: number[] = [], r: number[] = [];
        for (const l of measured) {
          const m = l.text.match(
            /PROBE BLK RATE round=\d+ write_kibps=(\d+) read_kibps=(\d+) write_iops=(\d+) read_iops=(\d+)/,
          );
          if (!m) throw new Error(`cannot parse '${l.text}'`);
          w.push(s.unit === "IOPS" ? Number(m[3]) : Number(m[1]) / 1024);
          r.push(s.unit === "IOPS" ? Number(m[4]) : Number(m[2]) / 1024);
        }
        // Each round writes then reads the whole area: 2 × mib / reqKiB requests (and one flush).
        const perRound = 2 * (mib * 1024) / s.reqKiB;
        const cpu = perCpuSecond(measured.length * perRound, start, measured.at(-1)!);
        return { write: median(w), read: median(r), cpu };
      }),
  };
}

function netDev(ctx: Ctx): { ferry: string[]; qemu: string[] } {
  const tap = ctx.net!.tap;
  return {
    ferry: [
      "-netdev",
      `tap,id=n0,ifname=${tap}`,
      "-device",
      `virtio-net-pci,netdev=n0,id=n0,mac=${GUEST_MAC},bus=pcie.0,addr=0x3`,
    ],
    qemu: [
      "-netdev",
      `tap,id=n0,ifname=${tap},script=no,downscript=no`,
      "-device",
      `virtio-net-pci,netdev=n0,mac=${GUEST_MAC},disable-legacy=on,addr=0x3`,
    ],
  };
}

function netTxGroup(ctx: Ctx): Group {
  // A whole burst must finish within io_timeout_ms, or the probe stops (PROBE NET TIMEOUT) and its
  // idle loop overwrites the TX ring; its 2 s default failed both VMMs in load spikes
  // (docs/io-performance.md), so both get 10 s here.
  const append = `mode=net net_burst=${NET_TX_BURST} rounds=0 interval_ms=100 cpus=1 io_timeout_ms=10000`;
  return {
    id: "net-tx",
    metrics: [
      { name: "tx", label: "net TX 60B frames", unit: "frames/s" },
      { name: "cpu", label: "net TX per CPU s", unit: "frames" },
    ],
    results: { ferry: [], qemu: [] },
    errors: { ferry: [], qemu: [] },
    notes: [`bursts of ${NET_TX_BURST}`],
    run: (vmm) =>
      withVm(ctx, vmCommand(ctx, vmm, append, netDev(ctx), true), async (vm) => {
        const { start, measured } = await rampThenMeasure(vm, /PROBE NET RATE tx_fps=\d+/, 60_000);
        assertClean(vm);
        const tx = measured.map((l) => Number(l.text.match(/tx_fps=(\d+)/)![1]));
        // A RATE line ends each burst.
        return { tx: median(tx), cpu: perCpuSecond(measured.length * NET_TX_BURST, start, measured.at(-1)!) };
      }),
  };
}

function netRxGroup(ctx: Ctx): Group {
  // 2 frames per interval (NET RATE needs a burst > 1); the guest otherwise only polls RX.
  const append = "mode=net net_burst=2 rounds=600 interval_ms=100 cpus=1";
  const blaster: Record<Vmm, { offered: number; refused: number }[]> = { ferry: [], qemu: [] };
  return {
    id: "net-rx",
    metrics: [
      { name: "rx", label: "net RX 60B frames", unit: "frames/s" },
      { name: "cpu", label: "net RX per CPU s", unit: "frames" },
    ],
    results: { ferry: [], qemu: [] },
    errors: { ferry: [], qemu: [] },
    notes: [],
    blaster,
    run: (vmm) =>
      withVm(ctx, vmCommand(ctx, vmm, append, netDev(ctx), true), async (vm) => {
        await vm.waitFor(/PROBE NET READY/, 30_000);
        const bl = startBlaster(ctx.net!, GUEST_MAC, RAMP_MS / 1000 + BLAST_SECS);
        ctx.live.add(bl);
        let t0: number, t1: number, sent: number, ref: number, secs: number;
        try {
          t0 = (await bl.waitFor(/BLAST start/, 10_000)).line.t;
          const end = await bl.waitFor(/BLAST sent=/, RAMP_MS + BLAST_SECS * 1000 + 10_000);
          t1 = end.line.t;
          const m = end.line.text.match(/sent=(\d+) refused=(\d+) secs=([\d.]+)/)!;
          [sent, ref, secs] = [Number(m[1]), Number(m[2]), Number(m[3])];
        } finally {
          await bl.kill();
          ctx.live.delete(bl);
        }
        assertClean(vm);
        const inWindow = vm.lines.flatMap((l) => {
          const m = l.text.match(/PROBE NET TX seq=\d+ rx=(\d+)/);
          return m && l.t > t0 + RAMP_MS && l.t < t1 ? [{ t: l.t, rx: Number(m[1]), line: l }] : [];
        });
        if (inWindow.length < 5) throw new Error(`only ${inWindow.length} NET TX lines during the blast`);
        const a = inWindow[0]!, b = inWindow.at(-1)!;
        blaster[vmm].push({ offered: (sent + ref) / secs, refused: ref / secs });
        return { rx: (b.rx - a.rx) / ((b.t - a.t) / 1000), cpu: perCpuSecond(b.rx - a.rx, a.line, b.line) };
      }),
  };
}

// ------------------------------------------------------------------ the benchmark
/** ± half the range of `xs` as a percentage of their median ("—" when empty). */
function spread(xs: number[]): string {
  if (xs.length === 0) return "—";
  const m = median(xs);
  return `±${((Math.max(...xs) - Math.min(...xs)) / 2 / m * 100).toFixed(0)}%`;
}

/** The host's load averages (1/5/15 min), or "" where /proc/loadavg is missing. */
function loadavg(): string {
  try {
    return `load ${Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ")}`;
  } catch {
    return "";
  }
}

function fmt(v: number, unit: string): string {
  if (!Number.isFinite(v)) return "—";
  if (unit === "MiB/s") return v.toFixed(0);
  return v >= 1e4 ? `${(v / 1000).toFixed(1)}k` : v.toFixed(0);
}

/** Runs the I/O benchmark; returns rows for the report. */
export async function benchIo(o: IoOptions): Promise<Row[]> {
  const t0 = performance.now();
  const image = `/tmp/ferry-iobench-${Deno.pid}.img`;
  const ctx: Ctx = { qemu: o.qemu, image, net: undefined, live: new Set() };
  const vmms: Vmm[] = o.qemu ? ["ferry", "qemu"] : ["ferry"];
  const onInt = () => {
    for (const p of ctx.live) {
      try {
        p.child.kill("SIGKILL");
      } catch { /* gone */ }
    }
    if (ctx.net) removeNetnsSync(ctx.net.ns);
    try {
      Deno.removeSync(image);
    } catch { /* not there */ }
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", onInt);
  const rows: Row[] = [];
  try {
    const f = Deno.openSync(image, { write: true, create: true, truncate: true });
    f.truncateSync(IMAGE_MIB << 20);
    f.close();
    const groups: Group[] = [];
    for (const cache of o.caches) for (const s of SHAPES) groups.push(blkGroup(ctx, cache, s));
    const wantNet = ["net-tx", "net-rx"].some((id) => o.only.every((w) => id.includes(w)));
    let netSkip: string | undefined;
    if (wantNet) {
      const n = await createIoNetns();
      if (typeof n === "string") netSkip = n;
      else {
        ctx.net = n;
        groups.push(netTxGroup(ctx));
        const why = await blasterSkipReason();
        if (why) netSkip = `RX not measured: ${why}`;
        else groups.push(netRxGroup(ctx));
      }
    }
    const chosen = groups.filter((g) => o.only.every((w) => g.id.includes(w)));

    out(
      `io: probe guest (1 vCPU, 256 MiB), ${IMAGE_MIB} MiB raw image in /tmp, ${o.runs} runs each, ` +
        `${vmms.join("/")} alternating; medians over runs`,
    );
    out(
      `  warm-up, both VMMs alike: the first round (burst) and all ending within ${RAMP_MS / 1000} s of it ` +
        `discarded (RX: the blast's first ${RAMP_MS / 1000} s); per run the median of the next ` +
        `≥ ${MEASURE_ROUNDS} rounds over ≥ ${MEASURE_MS / 1000} s`,
    );
    for (const l of SIDES) out(l);
    if (!o.qemu) out("  qemu   not installed (apt-get install qemu-system-x86): no ratio");
    if (netSkip) out(`  net: ${netSkip}`);
    out(`  before: ${loadavg()} (other processes on this host share its CPUs)`);
    for (let r = 0; r < o.runs; r++) {
      const tr = performance.now();
      const order = r % 2 === 1 ? [...vmms].reverse() : vmms;
      for (const g of chosen) {
        for (const vmm of order) {
          try {
            g.results[vmm].push(await g.run(vmm));
          } catch (e) {
            const msg = e instanceof Error ? e.message : String(e);
            g.errors[vmm].push(msg);
            out(`  ! ${vmm} ${g.id} run ${r + 1}: ${msg.slice(0, 4000)}`);
          }
        }
      }
      out(`  run ${r + 1}/${o.runs} done (${((performance.now() - tr) / 1000).toFixed(1)} s, ${loadavg()})`);
    }

    out();
    out(
      `  ${"metric".padEnd(28)} ${"unit".padEnd(9)} ${"ferry".padStart(9)} ${
        "qemu".padStart(9)
      }  ferry/qemu  spread f/q`,
    );
    for (const g of chosen) {
      for (const m of g.metrics) {
        const values = (v: Vmm) => g.results[v].map((x) => x[m.name]!).filter(Number.isFinite);
        const fv = median(values("ferry"));
        const qv = o.qemu ? median(values("qemu")) : NaN;
        const ratio = fv / qv;
        const ok = vmms.map((v) => `${g.results[v].length}/${o.runs}`).join(" ");
        const sp = vmms.map((v) => spread(values(v))).join("/");
        const notes = [...g.notes];
        if (g.blaster) {
          for (const v of vmms) {
            const b = g.blaster[v];
            if (b.length === 0) continue;
            const offered = fmt(median(b.map((x) => x.offered)), "");
            notes.push(
              `${v}: blaster offered ${offered}/s, tap refused ${fmt(median(b.map((x) => x.refused)), "")}/s`,
            );
            if (b.some((x) => x.refused === 0)) notes.push(`${v}: blaster-bound in some runs`);
          }
        }
        out(
          `  ${m.label.padEnd(28)} ${m.unit.padEnd(9)} ${fmt(fv, m.unit).padStart(9)} ${
            fmt(qv, m.unit).padStart(9)
          }  ${Number.isFinite(ratio) ? ratio.toFixed(2).padStart(10) : "—".padStart(10)}  ${sp.padEnd(10)}` +
            `  ok ${ok}${notes.length ? `  (${notes.join(", ")})` : ""}`,
        );
        const row: Row = {
          bench: `io ${m.label}`,
          unit: m.unit,
          ferry: Number.isFinite(fv) ? +fv.toFixed(0) : "error",
          qemu: o.qemu ? (Number.isFinite(qv) ? +qv.toFixed(0) : "error") : "—",
          ratio: Number.isFinite(ratio) ? +ratio.toFixed(2) : "—",
          "runs_ok": ok,
          spread: sp,
          note: notes.join(", "),
        };
        rows.push(row);
      }
    }
    if (o.verbose) {
      out("  every run (in order):");
      for (const g of chosen) {
        for (const m of g.metrics) {
          const per = vmms.map((v) => `${v} ${g.results[v].map((x) => fmt(x[m.name]!, m.unit)).join(" ")}`);
          out(`    ${m.label.padEnd(28)} ${per.join("   ")}`);
        }
      }
    }
    if (netSkip) {
      out(`  net: ${netSkip}`);
      rows.push({
        bench: netSkip.startsWith("RX") ? "io net RX" : "io net",
        unit: "",
        ferry: "—",
        qemu: "—",
        ratio: "—",
        "runs_ok": "",
        spread: "",
        note: netSkip,
      });
    }
    out(
      `  ratio > 1: ferry faster (every metric is higher-is-better); spread: ± half the range of the runs ` +
        `around their median; ${((performance.now() - t0) / 1000).toFixed(0)} s`,
    );
  } finally {
    for (const p of [...ctx.live]) await p.kill();
    if (ctx.net) await ctx.net.remove();
    try {
      Deno.removeSync(image);
    } catch { /* not created */ }
    Deno.removeSignalListener("SIGINT", onInt);
  }
  return rows;
}
