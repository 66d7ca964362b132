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

Deno.test("spinning for a vCPU pays only when its run thread is on another CPU", () => {
  assert.equal(spinPays([block(TURN_THREAD, 1)], 0, 0), true);
  assert.equal(
    spinPays([block(TURN_THREAD, 0)], 0, 0),
    false,
    "same CPU: the spin would keep it from running",
  );
  assert.equal(spinPays([block(TURN_THREAD, -1)], 0, 0), false, "no hand-over yet: its CPU is unknown");
  assert.equal(spinPays([block(TURN_THREAD, 1)], 0, -1), false, "this thread's CPU is unknown");
});

Deno.test("spinning pays not while another vCPU is in the guest on either CPU", () => {
  // vCPU 0 is awaited on CPU 1, the spinner is on CPU 0.
  assert.equal(
    spinPays([block(TURN_THREAD, 1), block(TURN_THREAD, 0)], 0, 0),
    false,
    "vCPU 1 computes on the spinner's CPU",
  );
  assert.equal(
    spinPays([block(TURN_THREAD, 1), block(TURN_THREAD, 1)], 0, 0),
    false,
    "vCPU 1 computes on vCPU 0's CPU",
  );
  assert.equal(
    spinPays([block(TURN_THREAD, 1), block(TURN_THREAD, 2)], 0, 0),
    true,
    "vCPU 1 is on a third CPU",
  );
  assert.equal(
    spinPays([block(TURN_THREAD, 1), block(TURN_HOST, 0)], 0, 0),
    true,
    "vCPU 1 is out of the guest",
  );
  assert.equal(
    spinPays([block(TURN_THREAD, 1), block(TURN_THREAD, -1)], 0, 0),
    true,
    "vCPU 1 never left the guest: no CPU known",
  );
});
