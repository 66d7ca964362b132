/**
 * `deno task bench boot`: time from process start to the probe guest's `PROBE READY` line and
 * resident memory at that moment, ferry and QEMU (Debian, `-enable-kvm`) on the same guest,
 * interleaved in one run, printed side by side with ratios.
 * @module
 */
import { ferryCommand, median, out, PROBE, qemuBaseArgs, qemuBinary, rssKiB, Spawned } from "./_util.ts";

interface Sample {
  ms: number;
  rssKiB: number;
}

async function once(cmd: string, args: string[]): Promise<Sample> {
  const t0 = performance.now();
  const p = new Spawned(cmd, args);
  try {
    await p.waitLine(/PROBE READY/);
    const ms = performance.now() - t0;
    await new Promise((r) => setTimeout(r, 200)); // settle, then measure memory
    return { ms, rssKiB: rssKiB(p.child.pid) };
  } finally {
    await p.kill();
  }
}

/** Runs the boot benchmark; returns rows for the report. */
export async function benchBoot(runs = 5): Promise<Record<string, string | number>[]> {
  const guestArgs = ["-m", "256M", "-smp", "1", "-kernel", PROBE, "-append", "mode=idle interval_ms=1000"];
  const ferry = ferryCommand(["-machine", "q35", ...guestArgs, "-serial", "stdio"]);
  const qemu = qemuBinary();
  const qemuArgs = [...qemuBaseArgs(), "-serial", "stdio", ...guestArgs];
  const f: Sample[] = [], q: Sample[] = [];
  for (let i = 0; i < runs; i++) {
    f.push(await once(ferry.cmd, ferry.args));
    if (qemu) q.push(await once(qemu, qemuArgs));
  }
  const fm = median(f.map((s) => s.ms)), fr = median(f.map((s) => s.rssKiB));
  out(`boot: probe guest, 256 MiB, 1 vCPU, ${runs} runs each, interleaved (median)`);
  out(`  ferry  ${fm.toFixed(0).padStart(6)} ms to READY   RSS ${(fr / 1024).toFixed(1)} MiB`);
  if (!qemu) {
    out("  qemu   not installed (apt-get install qemu-system-x86): no ratio");
    return [{ bench: "boot", "ferry_ms": Math.round(fm), "ferry_rss_mib": +(fr / 1024).toFixed(1) }];
  }
  const qm = median(q.map((s) => s.ms)), qr = median(q.map((s) => s.rssKiB));
  out(`  qemu   ${qm.toFixed(0).padStart(6)} ms to READY   RSS ${(qr / 1024).toFixed(1)} MiB`);
  out(`  ratio ferry/qemu: time ${(fm / qm).toFixed(2)}  RSS ${(fr / qr).toFixed(2)}  (goal ≤ 1 on both)`);
  return [{
    bench: "boot",
    "ferry_ms": Math.round(fm),
    "qemu_ms": Math.round(qm),
    "time_ratio": +(fm / qm).toFixed(2),
    "ferry_rss_mib": +(fr / 1024).toFixed(1),
    "qemu_rss_mib": +(qr / 1024).toFixed(1),
    "rss_ratio": +(fr / qr).toFixed(2),
  }];
}
