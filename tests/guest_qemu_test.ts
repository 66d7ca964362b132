/**
 * Black box: the probe guest (zig-out/guest/probe.elf) boots under QEMU through its PVH entry,
 * brings up a second vCPU, runs natively on the PVM, keeps its memory pattern and register state,
 * and powers off. The same guest is what ferry boots, so this pins the guest apart from ferry.
 */
import assert from "node:assert/strict";
import { exists } from "./_fixture/ferry.ts";
import { bootProbeInQemu, type QemuRun, qemuSkipReason } from "./_fixture/qemu.ts";

const skipReason = qemuSkipReason;
/** On this host's paravirtual KVM the guest switches itself to native mode; elsewhere it cannot. */
const PVM = exists("/sys/module/kvm_pvm");

function skipped(reason: string | undefined): string {
  return reason === undefined ? "" : ` (skipped: ${reason})`;
}

function bootProbe(smp: number, append: string): Promise<QemuRun> {
  return bootProbeInQemu({ smp, append });
}

function progressCounts(lines: string[], cpu: number): number[] {
  const re = new RegExp(`^PROBE PROGRESS cpu=${cpu} count=(\\d+)$`);
  return lines.flatMap((l) => {
    const m = re.exec(l);
    return m ? [Number(m[1])] : [];
  });
}

Deno.test({
  name: `probe guest under QEMU -smp 2 keeps its memory pattern and both vCPUs progress${
    skipped(skipReason)
  }`,
  ignore: skipReason !== undefined,
  async fn() {
    const rounds = 1000;
    const run = await bootProbe(2, `mode=pattern mib=32 rounds=${rounds} interval_ms=20 exit=poweroff`);
    const t = run.transcript;
    assert.equal(run.code, 0, t);
    assert.equal(run.lines[0], "PROBE BOOT", t);
    const ready = run.lines.filter((l) => l.startsWith("PROBE READY"));
    assert.equal(ready.length, 1, t);
    assert.match(
      ready[0]!,
      new RegExp(
        `^PROBE READY cpus=2 mode=pattern mib=32 native=${PVM ? 1 : 0} tsc_khz=[1-9]\\d* ram_mib=25[56]$`,
      ),
    );
    for (const cpu of [0, 1]) {
      const counts = progressCounts(run.lines, cpu);
      assert.ok(counts.length >= 2, `cpu ${cpu} reports progress at least twice\n${t}`);
      for (let i = 1; i < counts.length; i++) {
        assert.ok(counts[i]! > counts[i - 1]!, `cpu ${cpu} progress increases: ${counts.join(", ")}`);
      }
    }
    const verified = run.lines.filter((l) => /^PROBE VERIFY ok round=\d+$/.test(l));
    assert.ok(verified.length >= 2, t);
    assert.equal(verified.at(-1), `PROBE VERIFY ok round=${rounds}`);
    assert.deepEqual(run.lines.filter((l) => l.includes("FAIL") || l.includes("EXCEPTION")), []);
    assert.equal(run.lines.at(-1), "PROBE EXIT poweroff", t);
  },
});

Deno.test({
  name: `probe guest bench mode under QEMU shows native execution far faster than emulated${
    skipped(skipReason ?? (PVM ? undefined : "the host KVM is not the PVM"))
  }`,
  ignore: skipReason !== undefined || !PVM,
  async fn() {
    const run = await bootProbe(1, "mode=bench rounds=1 interval_ms=50 exit=poweroff");
    const t = run.transcript;
    assert.equal(run.code, 0, t);
    assert.ok(run.lines.some((l) => /^PROBE READY cpus=1 mode=bench .*native=1 /.test(l)), t);
    const bench = run.lines.map((l) => /^PROBE BENCH emulated_ips=(\d+) native_ips=(\d+)$/.exec(l)).find((
      m,
    ) => m);
    assert.ok(bench, t);
    const emulated = Number(bench[1]);
    const native = Number(bench[2]);
    assert.ok(emulated > 0, t);
    assert.ok(native > 100 * emulated, `native ${native} it/s vs emulated ${emulated} it/s`);
    assert.equal(run.lines.at(-1), "PROBE EXIT poweroff", t);
  },
});
