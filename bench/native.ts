/**
 * `deno task bench native`: proves the probe guest runs natively on this host's PVM. The guest
 * runs one loop emulated and then native and prints both rates (`PROBE BENCH`); ferry and QEMU
 * boot the same guest, so both VMMs' numbers are shown side by side.
 * @module
 */
import { ferryCommand, out, PROBE, qemuBaseArgs, qemuBinary, Spawned } from "./_util.ts";

async function rates(cmd: string, args: string[]): Promise<{ emulated: number; native: number }> {
  const p = new Spawned(cmd, args);
  try {
    const l = await p.waitLine(/PROBE BENCH/, 60000);
    const m = l.match(/emulated_ips=(\d+) native_ips=(\d+)/);
    if (!m) throw new Error(`unexpected line: ${l}`);
    return { emulated: Number(m[1]), native: Number(m[2]) };
  } finally {
    await p.kill();
  }
}

/** Runs the native-vs-emulated benchmark. */
export async function benchNative(): Promise<Record<string, string | number>[]> {
  const guest = ["-m", "256M", "-smp", "1", "-kernel", PROBE, "-append", "mode=bench"];
  const f = ferryCommand(["-machine", "q35", ...guest, "-serial", "stdio"]);
  const fr = await rates(f.cmd, f.args);
  out("native: probe guest loop, iterations per second, emulated ring 0 vs native (PVM MSR 0x4b564d10)");
  out(
    `  ferry  emulated ${fr.emulated.toExponential(2)}  native ${fr.native.toExponential(2)}  speed-up ${
      (fr.native / fr.emulated).toFixed(0)
    }×`,
  );
  const row: Record<string, string | number> = {
    bench: "native",
    "ferry_emulated_ips": fr.emulated,
    "ferry_native_ips": fr.native,
    "ferry_speedup": Math.round(fr.native / fr.emulated),
  };
  const qemu = qemuBinary();
  if (qemu) {
    const qr = await rates(qemu, [...qemuBaseArgs(), "-serial", "stdio", ...guest]);
    out(
      `  qemu   emulated ${qr.emulated.toExponential(2)}  native ${qr.native.toExponential(2)}  speed-up ${
        (qr.native / qr.emulated).toFixed(0)
      }×`,
    );
    out(`  ratio ferry/qemu native rate: ${(fr.native / qr.native).toFixed(2)}`);
    row.qemu_native_ips = qr.native;
    row.native_ratio = +(fr.native / qr.native).toFixed(2);
  }
  return [row];
}
