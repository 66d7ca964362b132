/**
 * Worker entry: the one vCPU Worker of a VM. Every vCPU runs on its own native run thread
 * (shim/vcpu_thread.zig) and this Worker handles all their exits ({@linkcode VcpuHost}), sleeping
 * synchronously on the doorbell futex in between; the one vCPU of a single-vCPU VM runs on this
 * thread instead ({@linkcode VcpuHost.runHere}) (a wake costs a few µs; a Promise per exit on an
 * event loop costs tens: DESIGN.md §2). Devices keep their registers in SharedArrayBuffers, so
 * the buses built here act on the same state as the main thread's.
 *
 * Messages: main → worker {@linkcode VcpuInit}; worker → main {@linkcode VcpuReady}, then
 * {@linkcode VcpuEvent}s.
 * @module
 */
/// <reference lib="deno.worker" />
import { shim } from "../ffi/shim.ts";
import { buildBuses, type DevicePlan } from "./platform.ts";
import { type VcpuEvent, VcpuHost, type VcpuHostPlan } from "./vcpu_host.ts";

export type { VcpuEvent } from "./vcpu_host.ts";

/** The first message the vCPU Worker receives. */
export interface VcpuInit {
  type: "init";
  host: VcpuHostPlan;
  devices: DevicePlan;
}

/** The Worker's answer once it serves exits. */
export interface VcpuReady {
  type: "ready";
  tid: number;
}

function post(msg: VcpuReady | VcpuEvent): void {
  self.postMessage(msg);
}

async function serve(init: VcpuInit): Promise<void> {
  const lib = shim();
  let host: VcpuHost | undefined = undefined;
  const buses = await buildBuses(init.devices, (r) => host?.request(r));
  host = new VcpuHost(init.host, buses, post);
  const bell = host.doorbellAddr;
  post({ type: "ready", tid: Number(lib.ferry_gettid()) });
  for (;;) {
    const seen = host.doorbell();
    const sleepMs = host.poll();
    if (sleepMs < 0) break;
    if (host.runHere()) continue;
    const spinNs = host.spinNs();
    if (spinNs === 0) lib.ferry_futex_wait(bell, seen, sleepMs);
    else host.spun(lib.ferry_futex_wait_spin(bell, seen, BigInt(spinNs), sleepMs) === 1n);
  }
}

self.onmessage = async (e: MessageEvent<VcpuInit>) => {
  const init = e.data;
  if (init.type !== "init") return;
  try {
    await serve(init);
  } catch (err) {
    post({ type: "event", id: 0, kind: "error", detail: `vCPU Worker failed: ${String(err)}` });
  }
  self.close();
};
