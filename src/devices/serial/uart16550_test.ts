import assert from "node:assert/strict";
import { assertMigratable } from "../_testing.ts";
import {
  FCR_ENABLE,
  IER_MSI,
  IER_RDI,
  IER_RLSI,
  IER_THRI,
  IIR_CTI,
  IIR_FIFO_ENABLED,
  IIR_MSI,
  IIR_NO_INT,
  IIR_RDI,
  IIR_RLSI,
  IIR_THRI,
  LCR_DLAB,
  LSR_DR,
  LSR_OE,
  LSR_TEMT,
  LSR_THRE,
  MCR_LOOP,
  MCR_OUT2,
  MCR_RTS,
  MSR_CTS,
  MSR_DCTS,
  MSR_DDSR,
  Uart16550,
  UART_IER,
  UART_IIR_FCR,
  UART_LCR,
  UART_LSR,
  UART_MCR,
  UART_MSR,
  UART_RBR_THR,
  UART_SCR,
} from "./uart16550.ts";
import { UART_RX_FIFO_SIZE } from "./uart16550_state.ts";

interface Rig {
  uart: Uart16550;
  out: number[];
  irqs: boolean[];
  shared: SharedArrayBuffer;
  inb(reg: number): number;
  outb(reg: number, v: number): void;
}

function rig(shared = Uart16550.createShared()): Rig {
  const out: number[] = [];
  const irqs: boolean[] = [];
  const uart = new Uart16550({ shared, output: (b) => out.push(...b), irq: (l) => irqs.push(l) });
  return {
    uart,
    out,
    irqs,
    shared,
    inb(reg) {
      const d = new Uint8Array(1);
      uart.read(reg, d);
      return d[0]!;
    },
    outb(reg, v) {
      uart.write(reg, Uint8Array.of(v));
    },
  };
}

Deno.test("Uart16550 sends a THR write to output at once", () => {
  const r = rig();
  for (const c of new TextEncoder().encode("hi\n")) r.outb(UART_RBR_THR, c);
  assert.deepEqual(r.out, [0x68, 0x69, 0x0a]);
  assert.equal(r.inb(UART_LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
});

Deno.test("Uart16550 divisor latch round-trips behind DLAB and leaves THR/IER alone", () => {
  const r = rig();
  r.outb(UART_IER, 0x05);
  r.outb(UART_LCR, LCR_DLAB | 0x03);
  r.outb(UART_RBR_THR, 0x01);
  r.outb(UART_IER, 0x00);
  assert.equal(r.inb(UART_RBR_THR), 0x01);
  assert.equal(r.inb(UART_IER), 0x00);
  assert.deepEqual(r.out, [], "a DLL write is not transmitted");
  r.outb(UART_LCR, 0x03);
  assert.equal(r.inb(UART_IER), 0x05);
  assert.equal(r.inb(UART_LCR), 0x03);
  assert.equal((r.uart.save() as { divisor: number }).divisor, 0x0001);
});

Deno.test("Uart16550 LSR shows THRE|TEMT, DR follows the FIFO and errors clear on read", () => {
  const r = rig();
  assert.equal(r.inb(UART_LSR), LSR_THRE | LSR_TEMT);
  r.outb(UART_IIR_FCR, FCR_ENABLE);
  r.uart.pushInput(Uint8Array.of(0x41));
  assert.equal(r.inb(UART_LSR), LSR_THRE | LSR_TEMT | LSR_DR);
  r.inb(UART_RBR_THR);
  assert.equal(r.inb(UART_LSR), LSR_THRE | LSR_TEMT);
  // Overrun in loopback: fill the FIFO, then one more.
  r.outb(UART_MCR, MCR_LOOP);
  for (let i = 0; i <= UART_RX_FIFO_SIZE; i++) r.outb(UART_RBR_THR, i);
  assert.equal(r.inb(UART_LSR), LSR_THRE | LSR_TEMT | LSR_DR | LSR_OE);
  assert.equal(r.inb(UART_LSR), LSR_THRE | LSR_TEMT | LSR_DR, "OE clears on read");
});

Deno.test("Uart16550 RX FIFO drains through RBR in order and DR clears when empty", () => {
  const r = rig();
  r.outb(UART_IIR_FCR, FCR_ENABLE);
  assert.equal(r.uart.pushInput(new TextEncoder().encode("abc")), 3);
  const got: number[] = [];
  while (r.inb(UART_LSR) & LSR_DR) got.push(r.inb(UART_RBR_THR));
  assert.equal(new TextDecoder().decode(Uint8Array.from(got)), "abc");
  assert.equal(r.inb(UART_LSR) & LSR_DR, 0);
});

Deno.test("Uart16550 pushInput takes only what fits: 16 with the FIFO on, 1 with it off", () => {
  const r = rig();
  const input = new Uint8Array(40).map((_, i) => i);
  assert.equal(r.uart.pushInput(input), 1, "FIFO disabled holds one byte");
  assert.equal(r.uart.pushInput(input), 0);
  r.outb(UART_IIR_FCR, FCR_ENABLE); // enabling resets the FIFO
  assert.equal(r.uart.pushInput(input), UART_RX_FIFO_SIZE);
  assert.equal(r.uart.rxRoom(), 0);
  assert.equal(r.inb(UART_RBR_THR), 0);
  assert.equal(r.uart.pushInput(input.subarray(UART_RX_FIFO_SIZE)), 1);
  r.outb(UART_IIR_FCR, FCR_ENABLE | 0x02); // clear RX
  assert.equal(r.inb(UART_LSR) & LSR_DR, 0);
  assert.equal(r.uart.rxRoom(), UART_RX_FIFO_SIZE);
});

Deno.test("Uart16550 IIR reports line status > RX data > THR empty > modem status, and irq follows", () => {
  const r = rig();
  r.outb(UART_IIR_FCR, FCR_ENABLE | 0x80); // trigger level 8
  assert.equal(r.inb(UART_IIR_FCR), IIR_FIFO_ENABLED | IIR_NO_INT);
  assert.deepEqual(r.irqs, []);

  r.outb(UART_IER, IER_THRI);
  assert.deepEqual(r.irqs, [true], "enabling THRI with THR empty raises the line");
  assert.equal(r.inb(UART_IIR_FCR), IIR_FIFO_ENABLED | IIR_THRI);
  assert.deepEqual(r.irqs, [true, false], "reading IIR clears the THRE interrupt");
  r.outb(UART_RBR_THR, 0x31);
  assert.deepEqual(r.irqs, [true, false, true], "a THR write raises it again");

  r.outb(UART_IER, IER_THRI | IER_RDI | IER_RLSI | IER_MSI);
  r.uart.pushInput(Uint8Array.of(1, 2));
  assert.equal(r.inb(UART_IIR_FCR) & 0x0f, IIR_CTI, "below the trigger level: character timeout");
  r.uart.pushInput(new Uint8Array(6));
  assert.equal(r.inb(UART_IIR_FCR) & 0x0f, IIR_RDI, "at the trigger level: data available");

  // Loopback overrun gives a line status interrupt, above RX data.
  r.outb(UART_MCR, MCR_LOOP | MCR_OUT2);
  for (let i = 0; i < UART_RX_FIFO_SIZE; i++) r.outb(UART_RBR_THR, i);
  assert.equal(r.inb(UART_IIR_FCR) & 0x0f, IIR_RLSI);
  r.inb(UART_LSR);
  assert.equal(r.inb(UART_IIR_FCR) & 0x0f, IIR_RDI);
  while (r.inb(UART_LSR) & LSR_DR) r.inb(UART_RBR_THR);
  assert.equal(r.inb(UART_IIR_FCR) & 0x0f, IIR_THRI, "then THR empty");
  assert.equal(r.inb(UART_IIR_FCR) & 0x0f, IIR_MSI, "then the loopback modem-line change");
  assert.equal(
    r.inb(UART_MSR) & 0x0f,
    MSR_DCTS | MSR_DDSR,
    "CTS and DSR drop on entering loopback (DCD follows OUT2)",
  );
  assert.equal(r.inb(UART_IIR_FCR) & 0x0f, IIR_NO_INT);
  assert.equal(r.irqs.at(-1), false, "the line is low once nothing is pending");
  r.outb(UART_MCR, MCR_LOOP | MCR_OUT2 | MCR_RTS);
  assert.equal(r.inb(UART_MSR), MSR_CTS | 0x80 | MSR_DCTS, "RTS loops back to CTS");
  assert.equal(r.irqs.at(-1), false);

  r.outb(UART_IER, 0);
  assert.equal(r.irqs.at(-1), false);
  for (let i = 1; i < r.irqs.length; i++) {
    assert.notEqual(r.irqs[i], r.irqs[i - 1], "irq is called only on change");
  }
});

Deno.test("Uart16550 loopback echoes THR into RX and sends nothing out", () => {
  const r = rig();
  r.outb(UART_MCR, MCR_LOOP);
  r.outb(UART_RBR_THR, 0x7e);
  assert.deepEqual(r.out, []);
  assert.equal(r.inb(UART_RBR_THR), 0x7e);
  assert.equal(r.uart.pushInput(Uint8Array.of(1, 2)), 2, "external input is dropped while looped back");
  assert.equal(r.inb(UART_LSR) & LSR_DR, 0);
});

Deno.test("Uart16550 objects over the same SharedArrayBuffer are one device", () => {
  const a = rig();
  const b = rig(a.shared);
  a.outb(UART_SCR, 0x99);
  assert.equal(b.inb(UART_SCR), 0x99);
  b.outb(UART_IIR_FCR, FCR_ENABLE);
  a.uart.pushInput(Uint8Array.of(10, 20));
  assert.equal(b.inb(UART_RBR_THR), 10);
  assert.equal(a.inb(UART_RBR_THR), 20);
  b.outb(UART_IER, IER_RDI);
  a.uart.pushInput(Uint8Array.of(30));
  assert.deepEqual(a.irqs, [true], "the object that changed the level calls its irq");
  assert.equal(b.inb(UART_RBR_THR), 30);
  assert.deepEqual(b.irqs, [false]);
  b.outb(UART_RBR_THR, 0x42);
  assert.deepEqual(b.out, [0x42]);
  assert.deepEqual(a.out, []);
});

Deno.test("Uart16550 word accesses touch consecutive registers", () => {
  const r = rig();
  r.uart.write(UART_SCR - 1, Uint8Array.of(0xaa, 0x55)); // MSR (ignored), SCR
  assert.equal(r.inb(UART_SCR), 0x55);
  const d = new Uint8Array(2);
  r.uart.read(UART_SCR, d);
  assert.deepEqual([...d], [0x55, 0xff], "past the last register reads 0xff");
});

Deno.test("Uart16550 works across a real Worker: it transmits while the main thread feeds input", async () => {
  const shared = Uart16550.createShared();
  const main = rig(shared);
  main.outb(UART_IIR_FCR, FCR_ENABLE);
  const input = new Uint8Array(3000).map((_, i) => (i * 7) & 0xff);
  const count = 5000;
  const worker = new Worker(new URL("./_uart16550_test_worker.ts", import.meta.url), { type: "module" });
  const done = new Promise<{ out: Uint8Array; got: Uint8Array }>((resolve, reject) => {
    worker.onmessage = (e) => resolve(e.data);
    worker.onerror = (e) => {
      e.preventDefault();
      reject(new Error(e.message));
    };
  });
  worker.postMessage({ shared, count, expect: input.length });
  let pushed = 0;
  while (pushed < input.length) {
    pushed += main.uart.pushInput(input.subarray(pushed));
    if (pushed < input.length) await main.uart.waitForRoom(100);
  }
  const { out, got } = await done;
  assert.equal(out.length, count);
  assert.ok(out.every((b, i) => b === (i & 0xff)), "the worker's output is complete and in order");
  assert.deepEqual(got, input, "every input byte reached the worker once, in order");
  assert.equal(main.inb(UART_SCR), 0x5a, "a register the worker wrote is visible here");
  assert.deepEqual(main.out, []);
});

Deno.test("Uart16550 save/restore passes assertMigratable", () => {
  assertMigratable({
    make: () => rig().uart,
    mutate(uart) {
      const w = (reg: number, v: number) => uart.write(reg, Uint8Array.of(v));
      w(UART_LCR, LCR_DLAB | 0x1b);
      w(UART_RBR_THR, 0x01);
      w(UART_IER, 0x02);
      w(UART_LCR, 0x1b);
      w(UART_IIR_FCR, FCR_ENABLE | 0xc0);
      w(UART_IER, IER_RDI | IER_THRI);
      w(UART_SCR, 0x33);
      w(UART_MCR, MCR_LOOP | MCR_RTS);
      w(UART_RBR_THR, 0x44);
      uart.pushInput(Uint8Array.of(1, 2, 3));
    },
    invalid: [
      { field: "fcr", value: 0x02 },
      { field: "rx", value: new Uint8Array(UART_RX_FIFO_SIZE + 1) },
      { field: "ier", value: 16 },
      { field: "lcr", value: 256 },
    ],
  });
});

Deno.test("Uart16550 restore rejects a bad field naming it and raises irq for pending data", () => {
  const src = rig();
  src.outb(UART_IIR_FCR, FCR_ENABLE);
  src.outb(UART_IER, IER_RDI);
  src.uart.pushInput(Uint8Array.of(9));
  const state = src.uart.save() as Record<string, unknown>;
  const dst = rig();
  assert.throws(
    () => dst.uart.restore({ ...state, lcr: 300 } as never, 1),
    {
      name: "RangeError",
      message: "Cannot restore serial:ttyS0: field 'lcr' must be an integer 0..255 (got 300)",
    },
  );
  assert.throws(() => dst.uart.restore({ ...state, lcr: "3" } as never, 1), {
    name: "TypeError",
    message: "Cannot restore serial:ttyS0: field 'lcr' must be an integer 0..255 (got '3')",
  });
  dst.uart.restore(state as never, 1);
  assert.deepEqual(dst.irqs, [true]);
  assert.equal(dst.inb(UART_RBR_THR), 9);
});

Deno.test("Uart16550 reset returns to power-on values and lowers the line", () => {
  const r = rig();
  const reset = r.uart.save();
  r.outb(UART_IIR_FCR, FCR_ENABLE);
  r.outb(UART_IER, IER_RDI);
  r.uart.pushInput(Uint8Array.of(1));
  r.outb(UART_SCR, 7);
  r.uart.reset();
  assert.deepEqual(r.uart.save(), reset);
  assert.deepEqual(r.irqs, [true, false]);
});
