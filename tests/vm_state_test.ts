/**
 * The core of migration, in one process, on real KVM with the real probe guest: pause/resume,
 * vCPU state read and written back, and a whole-VM save → fresh VM → restore.
 */
import assert from "node:assert/strict";
import { Vm, type VmSpec } from "../src/machine/vm.ts";
import { decodeVcpuState } from "../src/machine/vcpu_state.ts";
import { decodeState, restoreSections, saveSections } from "../src/migration/mod.ts";
import { PROBE, tempDir } from "./_fixture/ferry.ts";
import { serialLines as lines, waitForSerial as waitFor } from "./_fixture/serial_file.ts";

function spec(cpus: number, serialPath: string, cmdline: string): VmSpec {
  return {
    memoryBytes: 128 << 20,
    cpus,
    serial: { kind: "file", path: serialPath },
    kernel: { path: PROBE, cmdline },
  };
}

function lastProgress(path: string, cpu: number): number {
  const ls = lines(path);
  for (let i = ls.length - 1; i >= 0; i--) {
    const m = ls[i]!.match(/PROBE PROGRESS cpu=(\d+) count=(\d+)/);
    if (m && Number(m[1]) === cpu) return Number(m[2]);
  }
  return -1;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("Vm pauses every vCPU, progress stops while paused and continues after resume", async () => {
  const dir = tempDir();
  const serial = `${dir}/serial.txt`;
  const vm = await Vm.create(spec(2, serial, "mode=idle interval_ms=50"), { boot: true });
  try {
    await vm.resume();
    await waitFor(serial, /PROBE READY cpus=2 .*native=1/);
    await waitFor(serial, /PROBE PROGRESS cpu=1 /);
    await vm.pause();
    await sleep(100); // lines being written when paused have landed
    const frozen = lines(serial).length;
    const p0 = lastProgress(serial, 0);
    await sleep(400);
    assert.equal(lines(serial).length, frozen, "no serial output while paused");
    // State can be read while paused and written back unchanged; the guest still runs right.
    for (let i = 0; i < 2; i++) vm.restoreVcpu(i, vm.saveVcpu(i));
    await vm.resume();
    await sleep(400);
    assert.ok(
      lastProgress(serial, 0) > p0,
      `progress continues after resume (${p0} → ${lastProgress(serial, 0)})`,
    );
    assert.ok(lastProgress(serial, 1) > 0);
    assert.ok(!lines(serial).some((l) => l.includes("FAIL")), "no self-check failure");
  } finally {
    await vm.destroy();
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("VcpuControl.hold keeps one vCPU out of the guest for the hold, across pause and resume, then it runs again", async () => {
  const dir = tempDir();
  const serial = `${dir}/serial.txt`;
  const vm = await Vm.create(spec(2, serial, "mode=idle interval_ms=50"), { boot: true });
  try {
    await vm.resume();
    await waitFor(serial, /PROBE READY cpus=2 .*native=1/);
    await waitFor(serial, /PROBE PROGRESS cpu=1 /);
    vm.control.hold(1, 3000);
    await sleep(100); // a line being written when held has landed
    const held = lastProgress(serial, 1);
    await vm.pause();
    await vm.resume();
    await sleep(1000);
    assert.equal(lastProgress(serial, 1), held, "no progress from the held vCPU");
    const deadline = Date.now() + 20000;
    while (lastProgress(serial, 1) === held && Date.now() < deadline) await sleep(50);
    assert.ok(lastProgress(serial, 1) > held, `the vCPU runs again after the hold (${held})`);
    assert.ok(!lines(serial).some((l) => l.includes("FAIL")), "no self-check failure");
  } finally {
    await vm.destroy();
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("Vm state saved from one VM and restored into a fresh VM continues the guest with its pattern intact", async () => {
  const dir = tempDir();
  const serialA = `${dir}/a.txt`, serialB = `${dir}/b.txt`;
  const cmdline = "mode=pattern mib=32 interval_ms=50";
  const a = await Vm.create(spec(2, serialA, cmdline), { boot: true });
  let b: Vm | undefined;
  try {
    await a.resume();
    await waitFor(serialA, /PROBE READY cpus=2/);
    await waitFor(serialA, /PROBE VERIFY ok round=\d+/);
    await a.pause();
    // The one path migration takes: the VM's ordered migratables to sections and back.
    const sections = saveSections(a.migratables());
    assert.deepEqual(sections.slice(0, 3).map((s) => s.id), ["vm:kernel", "vcpu:0", "vcpu:1"]);
    // A probe guest on this host depends on the platform MSR; it must have been saved.
    const vcpu0 = decodeVcpuState("vcpu:0", decodeState(sections[1]!.payload));
    const pvm = vcpu0.msrs.find((m) => m.index === 0x4b564d10);
    if (a.msrIndices.includes(0x4b564d10)) assert.ok(pvm && pvm.value !== 0x400n, "native-mode MSR carried");
    const roundA = Number((await waitFor(serialA, /round=(\d+)/))[1]);

    b = await Vm.create(spec(2, serialB, cmdline), { boot: false });
    a.memory.regions.forEach((r, i) => b!.memory.regions[i]!.bytes.set(r.bytes));
    restoreSections(b.migratables(), sections);
    await a.destroy();
    await b.resume();
    const m = await waitFor(serialB, /PROBE VERIFY ok round=(\d+)/);
    assert.ok(Number(m[1]) >= roundA, `the destination continues from round ${roundA} (saw ${m[1]})`);
    await waitFor(serialB, /PROBE PROGRESS cpu=1 /);
    await sleep(300);
    const out = lines(serialB);
    assert.ok(!out.some((l) => l.includes("FAIL")), `no self-check failure:\n${out.slice(-10).join("\n")}`);
    assert.ok(!out.some((l) => l.includes("PROBE BOOT")), "the guest did not reboot");
  } finally {
    await a.destroy();
    await b?.destroy();
    Deno.removeSync(dir, { recursive: true });
  }
});
