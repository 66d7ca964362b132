import assert from "node:assert/strict";
import { PioBus } from "../../bus/bus.ts";
import { assertMigratable } from "../_testing.ts";
import {
  I8042,
  I8042_COMMAND_PORT,
  I8042_STATUS_IDLE,
  type PlatformRequest,
  RESET_CONTROL_PORT,
  ResetControl,
} from "./reset.ts";

function machine() {
  const requests: PlatformRequest[] = [];
  const onRequest = (r: PlatformRequest) => requests.push(r);
  const pio = new PioBus();
  const rcr = new ResetControl({ shared: ResetControl.createShared(), onRequest });
  pio.register(RESET_CONTROL_PORT, 1, rcr, rcr.id);
  pio.register(I8042_COMMAND_PORT, 1, new I8042({ onRequest }), "i8042");
  const inb = (port: number) => {
    const d = new Uint8Array(1);
    pio.read(port, d);
    return d[0]!;
  };
  const outb = (port: number, v: number) => pio.write(port, Uint8Array.of(v));
  return { requests, rcr, inb, outb };
}

Deno.test("ResetControl requests a reset on outb 0xcf9 0x06 and 0x0e, not on 0x02", () => {
  const m = machine();
  m.outb(RESET_CONTROL_PORT, 0x02);
  assert.deepEqual(m.requests, []);
  assert.equal(m.inb(RESET_CONTROL_PORT), 0x02, "SYS_RST is kept");
  m.outb(RESET_CONTROL_PORT, 0x06);
  assert.deepEqual(m.requests, ["reset"]);
  m.outb(RESET_CONTROL_PORT, 0x0e);
  assert.deepEqual(m.requests, ["reset", "reset"]);
});

Deno.test("I8042 requests a reset on command 0xfe and reads as idle with no data", () => {
  const m = machine();
  assert.equal(m.inb(I8042_COMMAND_PORT), I8042_STATUS_IDLE);
  assert.equal(m.inb(I8042_COMMAND_PORT) & 0x03, 0, "OBF and IBF are clear");
  m.outb(I8042_COMMAND_PORT, 0xaa);
  assert.deepEqual(m.requests, []);
  m.outb(I8042_COMMAND_PORT, 0xfe);
  assert.deepEqual(m.requests, ["reset"]);
});

Deno.test("ResetControl save/restore passes assertMigratable", () => {
  assertMigratable({
    make: () => new ResetControl({ shared: ResetControl.createShared(), onRequest: () => {} }),
    mutate: (d) => d.write(0, Uint8Array.of(0x0a)),
    invalid: [{ field: "rcr", value: 0x04 }],
  });
});
