/**
 * Worker for uart16550_test.ts: plays a vCPU thread that owns its own `Uart16550` over the shared
 * registers, transmits `count` bytes through THR and polls LSR/RBR until it has received `expect` bytes.
 * @module
 */
/// <reference lib="deno.worker" />
import { LSR_DR, Uart16550, UART_LSR, UART_RBR_THR, UART_SCR } from "./uart16550.ts";

interface Job {
  shared: SharedArrayBuffer;
  count: number;
  expect: number;
}

self.onmessage = (e: MessageEvent<Job>) => {
  const { shared, count, expect } = e.data;
  const out: number[] = [];
  const uart = new Uart16550({ shared, output: (b) => out.push(b[0]!) });
  const one = new Uint8Array(1);
  one[0] = 0x5a;
  uart.write(UART_SCR, one);
  const got: number[] = [];
  let sent = 0;
  const deadline = Date.now() + 10_000;
  while ((sent < count || got.length < expect) && Date.now() < deadline) {
    if (sent < count) {
      one[0] = sent++ & 0xff;
      uart.write(UART_RBR_THR, one);
    }
    uart.read(UART_LSR, one);
    if (one[0]! & LSR_DR) {
      uart.read(UART_RBR_THR, one);
      got.push(one[0]!);
    }
  }
  self.postMessage({ out: new Uint8Array(out), got: new Uint8Array(got) });
  self.close();
};
