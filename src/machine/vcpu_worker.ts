/**
 * Worker entry: one per vCPU. Blocks synchronously in `KVM_RUN` (DESIGN.md §2) and handles PIO
 * and MMIO exits here, through its own copy of the device buses (devices keep their registers
 * in SharedArrayBuffers). Pause/stop follow the protocol in vcpu_control.ts.
 *
 * Messages: main → worker `VcpuInit`; worker → main `VcpuReady`, then `VcpuEvent`s.
 * @module
 */
/// <reference lib="deno.worker" />
import { ABI } from "../ffi/abi.ts";
import { shim, viewAt } from "../ffi/shim.ts";
import { EXIT, exitName, KVM } from "../kvm/ioctls.ts";
import { buildBuses, type DevicePlan, type MachineRequest } from "./platform.ts";
import { REQ_PAUSE, REQ_RUN, REQ_STOP, ST_EXITED, ST_PAUSED, ST_RUNNING } from "./vcpu_control.ts";

/** The first message a vCPU Worker receives. */
export interface VcpuInit {
  type: "init";
  id: number;
  fd: number;
  runAddr: bigint;
  runSize: number;
  control: SharedArrayBuffer;
  devices: DevicePlan;
}

/** The Worker's answer once it can run. */
export interface VcpuReady {
  type: "ready";
  id: number;
  tid: number;
}

/** Something the machine must act on. */
export interface VcpuEvent {
  type: "event";
  id: number;
  kind: "request" | "shutdown" | "error";
  request?: MachineRequest;
  detail: string;
}

const EINTR = 4, EAGAIN = 11;

function post(msg: VcpuReady | VcpuEvent): void {
  self.postMessage(msg);
}

function run(init: VcpuInit): void {
  const lib = shim();
  const words = new Int32Array(init.control);
  const slot = 1 + init.id;
  const runView = viewAt(init.runAddr, init.runSize);
  const runDv = new DataView(runView.buffer);
  const u = ABI["kvm_run.exit_union"];
  let pending: MachineRequest | undefined;
  const buses = buildBuses(init.devices, (req) => {
    pending = req;
  });
  const fd = init.fd;
  const runReq = KVM.RUN;

  for (;;) {
    const req = Atomics.load(words, 0);
    if (req !== REQ_RUN) {
      if (req === REQ_STOP) break;
      Atomics.store(words, slot, ST_PAUSED);
      Atomics.notify(words, slot);
      Atomics.wait(words, 0, REQ_PAUSE, 1000);
      if (Atomics.load(words, 0) === REQ_RUN) Atomics.store(words, slot, ST_RUNNING);
      continue;
    }
    const rc = Number(lib.ferry_ioctl_val(fd, runReq, 0n));
    if (rc < 0) {
      if (-rc === EINTR || -rc === EAGAIN) continue;
      post({ type: "event", id: init.id, kind: "error", detail: `KVM_RUN failed: errno ${-rc}` });
      break;
    }
    const reason = runDv.getUint32(ABI["kvm_run.exit_reason"], true);
    switch (reason) {
      case EXIT.IO: {
        const out = runView[u] === 1;
        const size = runView[u + 1]!;
        const port = runDv.getUint16(u + 2, true);
        const count = runDv.getUint32(u + 4, true);
        const off = Number(runDv.getBigUint64(u + 8, true));
        for (let i = 0; i < count; i++) {
          const data = runView.subarray(off + i * size, off + (i + 1) * size);
          if (out) buses.pio.write(port, data);
          else buses.pio.read(port, data);
        }
        break;
      }
      case EXIT.MMIO: {
        const addr = Number(runDv.getBigUint64(u, true));
        const len = runDv.getUint32(u + 16, true);
        const isWrite = runView[u + 20] === 1;
        const data = runView.subarray(u + 8, u + 8 + len);
        if (isWrite) buses.mmio.write(addr, data);
        else buses.mmio.read(addr, data);
        break;
      }
      case EXIT.HLT:
        // With the in-kernel irqchip HLT normally stays in the kernel; if it comes out, spin politely.
        Atomics.wait(words, 0, REQ_RUN, 1);
        break;
      case EXIT.SHUTDOWN:
        post({ type: "event", id: init.id, kind: "shutdown", detail: "guest triple fault (shutdown exit)" });
        Atomics.store(words, slot, ST_EXITED);
        Atomics.notify(words, slot);
        return;
      case EXIT.SYSTEM_EVENT: {
        const t = runDv.getUint32(u, true);
        const request: MachineRequest = t === 2 ? "reset" : "poweroff";
        post({ type: "event", id: init.id, kind: "request", request, detail: `system event ${t}` });
        Atomics.wait(words, 0, REQ_RUN, 50);
        break;
      }
      case EXIT.INTERNAL_ERROR:
      case EXIT.FAIL_ENTRY:
      default: {
        const sub = runDv.getUint32(u, true);
        post({
          type: "event",
          id: init.id,
          kind: "error",
          detail: `vCPU ${init.id} stopped: ${exitName(reason)} (suberror/reason ${sub})`,
        });
        Atomics.store(words, slot, ST_EXITED);
        Atomics.notify(words, slot);
        return;
      }
    }
    if (pending !== undefined) {
      post({
        type: "event",
        id: init.id,
        kind: "request",
        request: pending,
        detail: `guest requested ${pending}`,
      });
      pending = undefined;
      // The machine will pause or stop us; do not run the guest further meanwhile.
      while (Atomics.load(words, 0) === REQ_RUN) Atomics.wait(words, 0, REQ_RUN, 50);
    }
  }
  Atomics.store(words, slot, ST_EXITED);
  Atomics.notify(words, slot);
}

self.onmessage = (e: MessageEvent<VcpuInit>) => {
  const init = e.data;
  if (init.type !== "init") return;
  post({ type: "ready", id: init.id, tid: Number(shim().ferry_gettid()) });
  try {
    run(init);
  } catch (err) {
    post({ type: "event", id: init.id, kind: "error", detail: `vCPU ${init.id} failed: ${String(err)}` });
    const words = new Int32Array(init.control);
    Atomics.store(words, 1 + init.id, ST_EXITED);
    Atomics.notify(words, 1 + init.id);
  }
  self.close();
};
