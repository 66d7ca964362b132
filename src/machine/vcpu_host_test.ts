import assert from "node:assert/strict";
import { RUN_BLOCK, TURN_HOST, TURN_THREAD } from "../ffi/shim.ts";
import { spinPays } from "./vcpu_host.ts";

/** A RunBlock's words with the given turn and last CPU (-1: no hand-over yet). */
function block(turn: number, cpu: number): Int32Array {
  const w = new Int32Array(new SharedArrayBuffer(RUN_BLOCK.size));
  w[RUN_BLOCK.turn / 4] = turn;
  w[RUN_BLOCK.cpu / 4] = cpu;
  return w;
}

/** Each case: the vCPUs' (turn, last CPU), the spinner's CPU, and whether spinning for vCPU 0 pays. */
function check(cases: [why: string, vcpus: [number, number][], mine: number, pays: boolean][]): void {
  for (const [why, vcpus, mine, pays] of cases) {
    assert.equal(spinPays(vcpus.map(([t, c]) => block(t, c)), 0, mine), pays, why);
  }
}

Deno.test("spinning for a vCPU pays only when its run thread is on another CPU", () => {
  check([
    ["another CPU", [[TURN_THREAD, 1]], 0, true],
    ["same CPU: the spin would keep it from running", [[TURN_THREAD, 0]], 0, false],
    ["no hand-over yet: its CPU is unknown", [[TURN_THREAD, -1]], 0, false],
    ["this thread's CPU is unknown", [[TURN_THREAD, 1]], -1, false],
  ]);
});

Deno.test("spinning pays not while another vCPU is in the guest on either CPU", () => {
  // vCPU 0 is awaited on CPU 1, the spinner is on CPU 0.
  check([
    ["vCPU 1 computes on the spinner's CPU", [[TURN_THREAD, 1], [TURN_THREAD, 0]], 0, false],
    ["vCPU 1 computes on vCPU 0's CPU", [[TURN_THREAD, 1], [TURN_THREAD, 1]], 0, false],
    ["vCPU 1 is on a third CPU", [[TURN_THREAD, 1], [TURN_THREAD, 2]], 0, true],
    ["vCPU 1 is out of the guest", [[TURN_THREAD, 1], [TURN_HOST, 0]], 0, true],
    ["vCPU 1 never left the guest: no CPU known", [[TURN_THREAD, 1], [TURN_THREAD, -1]], 0, true],
  ]);
});
