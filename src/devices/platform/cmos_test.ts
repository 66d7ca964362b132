import assert from "node:assert/strict";
import { PioBus } from "../../bus/bus.ts";
import { assertMigratable } from "../_testing.ts";
import {
  Cmos,
  CMOS_DATA_PORT,
  CMOS_INDEX_PORT,
  REG_B_24H,
  REG_B_DM_BINARY,
  REG_B_SET,
  REG_D_VRT,
  RTC_CENTURY,
  RTC_DAY,
  RTC_HOURS,
  RTC_MINUTES,
  RTC_MONTH,
  RTC_REG_A,
  RTC_REG_B,
  RTC_REG_C,
  RTC_REG_D,
  RTC_SECONDS,
  RTC_WEEKDAY,
  RTC_YEAR,
} from "./cmos.ts";

const GIB = 2 ** 30;

function rig(options: { now?: () => number; lowMemBytes?: number; highMemBytes?: number } = {}) {
  const { now, ...sizes } = options;
  const cmos = new Cmos({ shared: Cmos.createShared(sizes), ...(now ? { now } : {}) });
  const pio = new PioBus();
  pio.register(CMOS_INDEX_PORT, 2, cmos, cmos.id);
  const get = (index: number) => {
    pio.write(CMOS_INDEX_PORT, Uint8Array.of(index));
    const d = new Uint8Array(1);
    pio.read(CMOS_DATA_PORT, d);
    return d[0]!;
  };
  const set = (index: number, v: number) => {
    pio.write(CMOS_INDEX_PORT, Uint8Array.of(index));
    pio.write(CMOS_DATA_PORT, Uint8Array.of(v));
  };
  return { cmos, pio, get, set };
}

function bcd(v: number): number {
  assert.ok((v >> 4) <= 9 && (v & 15) <= 9, `0x${v.toString(16)} is not BCD`);
  return (v >> 4) * 10 + (v & 15);
}

function readTime(get: (i: number) => number): number {
  for (let tries = 0; tries < 5; tries++) {
    const s = get(RTC_SECONDS);
    const t = Date.UTC(
      bcd(get(RTC_CENTURY)) * 100 + bcd(get(RTC_YEAR)),
      bcd(get(RTC_MONTH)) - 1,
      bcd(get(RTC_DAY)),
      bcd(get(RTC_HOURS)),
      bcd(get(RTC_MINUTES)),
      bcd(s),
    );
    if (get(RTC_SECONDS) === s) return t;
  }
  throw new Error("RTC seconds kept changing");
}

Deno.test("Cmos time registers are valid BCD and match the host clock within a second", () => {
  const r = rig();
  const t = readTime(r.get);
  assert.ok(
    Math.abs(t - Date.now()) < 1500,
    `RTC ${new Date(t).toISOString()} vs host ${new Date().toISOString()}`,
  );
  assert.equal(bcd(r.get(RTC_WEEKDAY)), new Date(t).getUTCDay() + 1);
  assert.equal(r.get(RTC_REG_B), REG_B_24H);
  assert.equal(r.get(RTC_REG_D), REG_D_VRT);
  assert.equal(r.get(RTC_REG_A) & 0x7f, 0x26);
});

Deno.test("Cmos reports binary and 12-hour forms per register B", () => {
  const now = () => Date.UTC(2024, 1, 29, 15, 4, 5, 200);
  const r = rig({ now });
  assert.equal(r.get(RTC_HOURS), 0x15);
  r.set(RTC_REG_B, REG_B_24H | REG_B_DM_BINARY);
  assert.deepEqual([
    r.get(RTC_HOURS),
    r.get(RTC_MINUTES),
    r.get(RTC_SECONDS),
    r.get(RTC_YEAR),
    r.get(RTC_CENTURY),
  ], [
    15,
    4,
    5,
    24,
    20,
  ]);
  r.set(RTC_REG_B, 0);
  assert.equal(r.get(RTC_HOURS), 0x80 | 0x03, "3 PM in BCD with the PM bit");
});

Deno.test("Cmos: a guest setting the time under SET moves the clock, which then runs on", () => {
  let now = Date.UTC(2024, 0, 1, 0, 0, 0, 300);
  const r = rig({ now: () => now });
  r.set(RTC_REG_B, REG_B_24H | REG_B_SET);
  now += 5000;
  assert.equal(r.get(RTC_SECONDS), 0x00, "frozen while SET");
  r.set(RTC_YEAR, 0x99);
  r.set(RTC_CENTURY, 0x19);
  r.set(RTC_MONTH, 0x12);
  r.set(RTC_DAY, 0x31);
  r.set(RTC_HOURS, 0x23);
  r.set(RTC_MINUTES, 0x59);
  r.set(RTC_SECONDS, 0x58);
  r.set(RTC_REG_B, REG_B_24H);
  assert.equal(r.get(RTC_SECONDS), 0x58);
  now += 2000;
  assert.deepEqual([
    r.get(RTC_CENTURY),
    r.get(RTC_YEAR),
    r.get(RTC_MONTH),
    r.get(RTC_DAY),
    r.get(RTC_SECONDS),
  ], [
    0x20,
    0x00,
    0x01,
    0x01,
    0x00,
  ]);
  r.set(RTC_MINUTES, 0x30); // without SET: applies at once
  assert.equal(r.get(RTC_MINUTES), 0x30);
  assert.equal(r.get(RTC_HOURS), 0x00);
});

Deno.test("Cmos holds NVRAM, clears register C on read, and keeps the NMI bit apart from the index", () => {
  const r = rig();
  r.set(0x40, 0xa5);
  assert.equal(r.get(0x40), 0xa5);
  r.pio.write(CMOS_INDEX_PORT, Uint8Array.of(0x80 | 0x40));
  assert.equal(r.cmos.nmiDisabled, true);
  const d = new Uint8Array(1);
  r.pio.read(CMOS_DATA_PORT, d);
  assert.equal(d[0], 0xa5);
  assert.equal(r.get(RTC_REG_C), 0);
  r.pio.write(CMOS_INDEX_PORT, Uint8Array.of(0x41, 0x3c)); // outw 0x70: index then data
  assert.equal(r.get(0x41), 0x3c);
  r.pio.read(CMOS_INDEX_PORT, d);
  assert.equal(d[0], 0xff, "the index port is write-only");
});

Deno.test("Cmos reports memory sizes in 0x15..0x18, 0x30/0x31, 0x34/0x35 and 0x5b..0x5d", () => {
  const r = rig({ lowMemBytes: 3 * GIB, highMemBytes: 5 * GIB });
  const word = (i: number) => r.get(i) | r.get(i + 1) << 8;
  assert.equal(word(0x15), 640);
  assert.equal(word(0x17), 0xffff);
  assert.equal(word(0x30), 0xffff);
  assert.equal(word(0x34), (3 * GIB - 16 * 2 ** 20) / 65536);
  assert.equal(r.get(0x5b) | r.get(0x5c) << 8 | r.get(0x5d) << 16, 5 * GIB / 65536);
  const small = rig({ lowMemBytes: 8 * 2 ** 20 });
  assert.equal(small.get(0x17) | small.get(0x18) << 8, 7 * 1024);
  assert.equal(small.get(0x34), 0);
  assert.throws(() => Cmos.createShared({ lowMemBytes: -1 }), RangeError);
});

Deno.test("Cmos save/restore passes assertMigratable", () => {
  const now = () => Date.UTC(2030, 5, 6, 7, 8, 9);
  assertMigratable({
    make: () => new Cmos({ shared: Cmos.createShared({ lowMemBytes: GIB }), now }),
    mutate(c) {
      c.write(0, Uint8Array.of(0x80 | RTC_HOURS, 0x11)); // NMI off, hours := 11
      c.write(0, Uint8Array.of(0x50, 0x77)); // NVRAM
    },
    invalid: [{ field: "index", value: 128 }, { field: "ram", value: new Uint8Array(127) }],
  });
});
