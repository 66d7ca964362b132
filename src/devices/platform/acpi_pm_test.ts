import assert from "node:assert/strict";
import { PioBus } from "../../bus/bus.ts";
import { assertMigratable } from "../_testing.ts";
import {
  ACPI_PM_BASE,
  ACPI_PM_LENGTH,
  AcpiPm,
  GPE0_BLK,
  PM1_CNT,
  PM1_CNT_SCI_EN,
  PM1_EN,
  PM1_PWRBTN,
  PM1_STS,
  PM_TIMER_HZ,
  PM_TMR,
} from "./acpi_pm.ts";
import type { PlatformRequest } from "./reset.ts";

function rig(clock?: () => number) {
  const requests: PlatformRequest[] = [];
  const irqs: boolean[] = [];
  const shared = AcpiPm.createShared(clock ? { clock } : {});
  const pm = new AcpiPm({
    shared,
    onRequest: (r) => requests.push(r),
    irq: (l) => irqs.push(l),
    ...(clock ? { clock } : {}),
  });
  const pio = new PioBus();
  pio.register(ACPI_PM_BASE, ACPI_PM_LENGTH, pm, pm.id);
  const inw = (port: number) => {
    const d = new Uint8Array(2);
    pio.read(port, d);
    return d[0]! | d[1]! << 8;
  };
  const inl = (port: number) => {
    const d = new Uint8Array(4);
    pio.read(port, d);
    return new DataView(d.buffer).getUint32(0, true);
  };
  const outw = (port: number, v: number) => pio.write(port, Uint8Array.of(v & 0xff, v >> 8));
  return { pm, shared, requests, irqs, inw, inl, outw };
}

Deno.test("AcpiPm: outw 0x604, 0x2000 (SLP_EN, SLP_TYP 0) requests poweroff", () => {
  const r = rig();
  assert.equal(r.inw(ACPI_PM_BASE + PM1_CNT), PM1_CNT_SCI_EN, "the machine starts in ACPI mode");
  r.outw(ACPI_PM_BASE + PM1_CNT, 0x2000);
  assert.deepEqual(r.requests, ["poweroff"]);
  assert.equal(r.inw(ACPI_PM_BASE + PM1_CNT) & 0x2000, 0, "SLP_EN reads back 0");
});

Deno.test("AcpiPm ignores sleep types other than S5", () => {
  const r = rig();
  r.outw(ACPI_PM_BASE + PM1_CNT, 0x2000 | (1 << 10) | PM1_CNT_SCI_EN);
  assert.deepEqual(r.requests, []);
  assert.equal(r.inw(ACPI_PM_BASE + PM1_CNT), (1 << 10) | PM1_CNT_SCI_EN);
});

Deno.test("AcpiPm PM timer counts at 3.579545 MHz, 24 bits, from the clock", async () => {
  let now = 1000;
  const r = rig(() => now);
  assert.equal(r.inl(ACPI_PM_BASE + PM_TMR), 0);
  now += 1;
  assert.equal(r.inl(ACPI_PM_BASE + PM_TMR), Math.floor(PM_TIMER_HZ / 1000));
  now += 10_000; // 35.8 M ticks: wraps at 2^24
  assert.equal(r.inl(ACPI_PM_BASE + PM_TMR), Math.floor(10_001 * PM_TIMER_HZ / 1000) % 2 ** 24);

  const real = rig();
  const a = real.inl(ACPI_PM_BASE + PM_TMR);
  await new Promise((res) => setTimeout(res, 5));
  const b = real.inl(ACPI_PM_BASE + PM_TMR);
  assert.ok(b > a && b - a >= 3 * 3579, `timer went ${a} → ${b} in ≥ 5 ms`);
  assert.ok(b < 2 ** 24);
});

Deno.test("AcpiPm power button raises the SCI when enabled; status is write-1-to-clear", () => {
  const r = rig();
  r.pm.pressPowerButton();
  assert.deepEqual(r.irqs, [], "not enabled yet");
  assert.equal(r.inw(ACPI_PM_BASE + PM1_STS), PM1_PWRBTN);
  r.outw(ACPI_PM_BASE + PM1_EN, PM1_PWRBTN);
  assert.deepEqual(r.irqs, [true]);
  r.outw(ACPI_PM_BASE + PM1_STS, 0x0001); // other bit: no effect
  assert.equal(r.inw(ACPI_PM_BASE + PM1_STS), PM1_PWRBTN);
  r.outw(ACPI_PM_BASE + PM1_STS, PM1_PWRBTN);
  assert.equal(r.inw(ACPI_PM_BASE + PM1_STS), 0);
  assert.deepEqual(r.irqs, [true, false]);
  r.pm.raiseGpe(9);
  r.outw(ACPI_PM_BASE + GPE0_BLK + 8, 0x0200);
  assert.deepEqual(r.irqs, [true, false, true]);
  r.outw(ACPI_PM_BASE + GPE0_BLK, 0x0200);
  assert.deepEqual(r.irqs, [true, false, true, false]);
});

Deno.test("AcpiPm save/restore passes assertMigratable and the timer continues from the saved value", () => {
  let now = 5000;
  const clock = () => now;
  assertMigratable({
    make: () => new AcpiPm({ shared: AcpiPm.createShared({ clock }), onRequest: () => {}, clock }),
    mutate(pm) {
      pm.write(PM1_EN, Uint8Array.of(0x00, 0x01));
      pm.write(PM1_CNT, Uint8Array.of(0x01, 0x04));
      pm.pressPowerButton();
      pm.raiseGpe(3);
      now += 2;
    },
    invalid: [{ field: "pm1Control", value: 0x2000 }, { field: "timer", value: 2 ** 24 }],
  });
  const src = rig(clock);
  now += 3;
  const state = src.pm.save();
  const saved = src.pm.timer();
  now += 1000; // downtime; a different clock origin on the destination
  const dst = rig(() => now * 2);
  dst.pm.restore(state, 1);
  assert.equal(dst.pm.timer(), saved);
});
