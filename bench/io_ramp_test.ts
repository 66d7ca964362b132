import assert from "node:assert/strict";
import { MEASURE_MS, MEASURE_ROUNDS, RAMP_MS, rampThenMeasure } from "./io.ts";
import { nonVcpuTicks, type TimedLine } from "./_io_vm.ts";

/** A VM whose lines arrived at the given times (ms), one RATE line each. */
function fakeVm(times: number[]) {
  const lines: TimedLine[] = times.map((t, i) => ({ t, text: `RATE round=${i + 1}` }));
  return {
    waitFor(re: RegExp, _timeoutMs: number, from = 0) {
      for (let i = from; i < lines.length; i++) {
        if (re.test(lines[i]!.text)) return Promise.resolve({ index: i, line: lines[i]! });
      }
      return Promise.reject(new Error("exited"));
    },
  };
}

Deno.test("rampThenMeasure discards the first round and all within RAMP_MS of it, then measures enough", async () => {
  const step = 100;
  const times = Array.from({ length: 200 }, (_, i) => 1000 + i * step);
  const { start, measured } = await rampThenMeasure(fakeVm(times), /RATE/, 10_000);
  // The ramp's last line is the last one less than RAMP_MS after the first.
  assert.equal(start.t, 1000 + (RAMP_MS / step - 1) * step);
  assert.equal(measured[0]!.t, 1000 + RAMP_MS);
  const want = Math.max(MEASURE_ROUNDS, Math.ceil(MEASURE_MS / step));
  assert.equal(measured.length, want);
});

Deno.test("rampThenMeasure measures at least MEASURE_ROUNDS slow rounds", async () => {
  const step = 900; // rounds longer than the ramp's share
  const times = Array.from({ length: 40 }, (_, i) => i * step);
  const { measured } = await rampThenMeasure(fakeVm(times), /RATE/, 10_000);
  assert.equal(measured.length, MEASURE_ROUNDS);
  assert.ok(measured[0]!.t >= RAMP_MS);
});

Deno.test("rampThenMeasure fails when the VM stops before enough rounds", async () => {
  await assert.rejects(() => rampThenMeasure(fakeVm([0, 100, 200]), /RATE/, 10_000), /exited/);
});

/** A /proc stat line with utime, stime and guest_time set (fields 14, 15, 43). */
function statLine(tid: number, comm: string, utime: number, stime: number, guest: number): string {
  const f = new Array<string>(50).fill("0");
  f[0] = "S";
  f[11] = String(utime);
  f[12] = String(stime);
  f[40] = String(guest);
  return `${tid} (${comm}) ${f.join(" ")}`;
}

Deno.test("nonVcpuTicks leaves out whole vCPU threads (guest_time > 0), even when their guest_time exceeds utime", () => {
  const proc = statLine(1, "qemu system", 300, 100, 260);
  const tasks = [
    statLine(1, "qemu system", 80, 40, 0), // main loop
    statLine(2, "qemu system", 150, 30, 260), // vCPU: guest_time > utime + stime (tick-sampled)
    statLine(3, "iou-wrk-1", 70, 30, 0),
  ];
  assert.equal(nonVcpuTicks(proc, tasks), 300 + 100 - (150 + 30));
  // An exited thread's time stays in the process's count.
  assert.equal(nonVcpuTicks(proc, tasks.slice(0, 2)), 220);
});
