/**
 * The vCPU host: handles the exits of every vCPU of a VM on one JavaScript thread. Each vCPU runs
 * on a native run thread (shim/vcpu_thread.zig) that only loops `KVM_RUN` and hands each return
 * over through its `RunBlock.turn`; this class reads `kvm_run`, dispatches PIO and MMIO to the
 * buses, and decides when a vCPU may enter the guest again (hands the turn back):
 *
 * - request RUN: at once, unless the vCPU is *held* ({@linkcode VcpuHost.hold}: HLT backs off 1 ms,
 *   a system event 50 ms, `VcpuControl.hold(i, ms)` from the main thread N ms) or *parked* (it raised reset/poweroff: the machine will
 *   pause or stop it).
 * - request PAUSE: never; once a vCPU's turn is here its state word says PAUSED. A paused vCPU is
 *   outside `KVM_RUN`, so its state can be saved and restored from any thread.
 * - request STOP: the loop ends and says so in the control words (the owner quits the threads and
 *   may free their memory only after that, vcpu_control.ts).
 *
 * {@linkcode VcpuHost.poll} does one pass and returns how long the caller may sleep on the
 * doorbell (a futex word every run thread bumps after a hand-over, and the main thread bumps after
 * each request): the vCPU Worker sleeps synchronously (vcpu_worker.ts).
 * @module
 */
import { ABI } from "../ffi/abi.ts";
import { RUN_BLOCK, shim, TURN_HOST, TURN_THREAD, viewAt } from "../ffi/shim.ts";
import { EXIT, exitName } from "../kvm/ioctls.ts";
import type { Buses, MachineRequest } from "./platform.ts";
import { REQ_RUN, REQ_STOP, ST_EXITED, ST_PAUSED, ST_RUNNING, type VcpuHostPlan } from "./vcpu_control.ts";

export type { VcpuHostPlan } from "./vcpu_control.ts";

/** Something the machine must act on. */
export interface VcpuEvent {
  type: "event";
  id: number;
  kind: "request" | "shutdown" | "error";
  request?: MachineRequest;
  detail: string;
}

const EINTR = 4, EAGAIN = 11;
/** Longest sleep on the doorbell: a bound, never needed for correctness. */
const MAX_SLEEP_MS = 1000;
/**
 * Longest spin on the doorbell before the vCPU Worker sleeps on it ({@linkcode VcpuHost.spinNs}),
 * as long as KVM's own halt polling (`halt_poll_ns` 200000). A vCPU in an exit loop comes back
 * within 45-60 µs here; a sleep instead costs a wake-up from another CPU each way, ~50 µs on this
 * nested host (docs/architecture.md §3). 128 µs with 16 waits of back-off measured 61-100 µs per
 * exit, 256 µs with 4 measured 46-85 (QEMU 48-93).
 */
export const SPIN_MAX_US = 200;
/** Waits that sleep at once after a spin ran out. */
export const SPIN_BACKOFF = 4;
/**
 * `pause` iterations a run thread spins on its turn before it sleeps, when it runs on another CPU
 * than the vCPU Worker (RunBlock.spin): the exit is handled in ~10 µs, and a sleeping thread's
 * wake-up costs more than that on this nested host.
 */
export const THREAD_SPIN = 3000;

/**
 * Whether spinning while vCPU `i`'s run thread has the turn pays, for a thread on CPU `mine`: that
 * run thread last ran on another CPU, and no other vCPU is in the guest on either CPU (a spin there
 * would keep that vCPU from running). `turns` are the vCPUs' `RunBlock`s as words (turn, cpu).
 */
export function spinPays(turns: readonly Int32Array[], i: number, mine: number): boolean {
  const cpu = Atomics.load(turns[i]!, RUN_BLOCK.cpu / 4);
  if (cpu < 0 || mine < 0 || cpu === mine) return false;
  for (let j = 0; j < turns.length; j++) {
    if (j === i) continue;
    const t = turns[j]!;
    if (Atomics.load(t, 0) !== TURN_THREAD) continue;
    const c = Atomics.load(t, RUN_BLOCK.cpu / 4);
    if (c === mine || c === cpu) return false;
  }
  return true;
}

/** Exit handling and turn hand-back for every vCPU of a VM (one thread). */
export class VcpuHost {
  readonly #words: Int32Array;
  readonly #turns: Int32Array[];
  readonly #runs: Uint8Array[];
  readonly #runDvs: DataView[];
  readonly #blockAddrs: bigint[];
  readonly #bell: Int32Array;
  readonly #bellAddr: bigint;
  readonly #buses: Buses;
  readonly #emit: (e: VcpuEvent) => void;
  /** Per vCPU: the exit now here was handled already. */
  readonly #handled: boolean[];
  readonly #parked: boolean[];
  readonly #exited: boolean[];
  readonly #holdUntilMs: number[];
  readonly #runOnHost: boolean;
  /** Waits left that sleep at once, after a spin that ran out ({@linkcode spinNs}). */
  #spinSkip = 0;
  /**
   * Whether spinning pays for the vCPU whose turn was handed back last (the next ring is most
   * likely its), as decided at that hand-back ({@linkcode spinPays}).
   */
  #lastPays = false;
  #pending: MachineRequest | undefined;

  /**
   * @param plan the VM's run blocks, doorbell, `kvm_run` mappings and control words
   * @param buses this thread's device buses
   * @param emit receives events the machine acts on (guest requests, shutdown, errors)
   */
  constructor(
    plan: VcpuHostPlan,
    buses: Buses,
    emit: (e: VcpuEvent) => void,
  ) {
    const n = plan.runs.length;
    this.#words = new Int32Array(plan.control);
    this.#blockAddrs = plan.runs.map((_, i) => plan.blocks + BigInt(i * plan.stride));
    this.#turns = this.#blockAddrs.map((a) => new Int32Array(viewAt(a, RUN_BLOCK.size).buffer));
    this.#runs = plan.runs.map((r) => viewAt(r.addr, r.size));
    this.#runDvs = this.#runs.map((r) => new DataView(r.buffer));
    this.#bellAddr = plan.doorbell;
    this.#bell = new Int32Array(viewAt(plan.doorbell, 4).buffer);
    this.#buses = buses;
    this.#emit = emit;
    this.#handled = new Array<boolean>(n).fill(true); // the first turn is a start, not an exit
    this.#parked = new Array<boolean>(n).fill(false);
    this.#exited = new Array<boolean>(n).fill(false);
    this.#holdUntilMs = new Array<number>(n).fill(0);
    this.#runOnHost = plan.runOnHost;
    // Kicks (pause, hold, stop) go to the thread in KVM_RUN: this one.
    if (this.#runOnHost) Atomics.store(this.#turns[0]!, RUN_BLOCK.tid / 4, Number(shim().ferry_gettid()));
  }

  /** Called by a device on this thread when the guest asks for reset or poweroff. */
  request(r: MachineRequest): void {
    this.#pending = r;
  }

  /** The doorbell's current value (read it before {@linkcode poll}, sleep while it holds it). */
  doorbell(): number {
    return Atomics.load(this.#bell, 0);
  }

  /** Address of the doorbell word, for the sleeper. */
  get doorbellAddr(): bigint {
    return this.#bellAddr;
  }

  /** Keeps vCPU `i` out of `KVM_RUN` until `ms` from now (it still pauses and resumes as asked). */
  hold(i: number, ms: number): void {
    this.#holdUntilMs[i] = Math.max(this.#holdUntilMs[i]!, performance.now() + ms);
  }

  /**
   * Handles every exit waiting here and hands back the turns that may run.
   * @returns how long to sleep on the doorbell in ms (-1: stop requested, the loop ends)
   */
  poll(): number {
    const req = Atomics.load(this.#words, 0);
    if (req === REQ_STOP) {
      if (this.#runOnHost) Atomics.store(this.#turns[0]!, RUN_BLOCK.tid / 4, 0);
      const left = 1 + this.#turns.length;
      Atomics.store(this.#words, left, 1);
      Atomics.notify(this.#words, left);
      return -1;
    }
    let sleepMs = MAX_SLEEP_MS;
    let now = 0;
    let mine: number | undefined; // this thread's CPU, read once per pass when a turn goes back
    for (let i = 0; i < this.#turns.length; i++) {
      if (this.#exited[i]) continue;
      const holdMs = Atomics.exchange(this.#words, 2 + this.#turns.length + i, 0);
      if (holdMs > 0) this.hold(i, holdMs);
      const turn = this.#turns[i]!;
      if (Atomics.load(turn, 0) !== TURN_HOST) continue;
      if (!this.#handled[i]) {
        this.#handled[i] = true;
        this.#handle(i, Atomics.load(turn, 1));
        if (this.#exited[i]) continue;
      }
      if (req !== REQ_RUN) {
        this.#parked[i] = false;
        if (Atomics.load(this.#words, 1 + i) !== ST_PAUSED) this.#setState(i, ST_PAUSED);
        continue;
      }
      if (this.#parked[i]) continue;
      const until = this.#holdUntilMs[i]!;
      if (until > 0) {
        if (now === 0) now = performance.now();
        if (until > now) {
          sleepMs = Math.min(sleepMs, Math.ceil(until - now));
          continue;
        }
        this.#holdUntilMs[i] = 0;
      }
      if (Atomics.load(this.#words, 1 + i) !== ST_RUNNING) this.#setState(i, ST_RUNNING);
      this.#handled[i] = false;
      if (this.#runOnHost) {
        Atomics.compareExchange(turn, 0, TURN_HOST, TURN_THREAD);
        continue;
      }
      // Its next wait for the turn spins first when that pays, as this thread's next one (spinNs()).
      mine ??= shim().ferry_getcpu();
      const pays = spinPays(this.#turns, i, mine);
      Atomics.store(turn, RUN_BLOCK.spin / 4, pays ? THREAD_SPIN : 0);
      if (Atomics.compareExchange(turn, 0, TURN_HOST, TURN_THREAD) === TURN_HOST) {
        shim().ferry_futex_wake(this.#blockAddrs[i]!, 1);
        this.#lastPays = pays;
      }
    }
    return sleepMs;
  }

  /**
   * With `runOnHost`: when vCPU 0 may run, runs it on this thread until its next exit (a kick ends
   * it early) and returns true; the exit is handled by the next {@linkcode poll}. Otherwise false.
   */
  runHere(): boolean {
    if (!this.#runOnHost || Atomics.load(this.#turns[0]!, 0) !== TURN_THREAD) return false;
    shim().ferry_vcpu_run_here(this.#blockAddrs[0]!);
    return true;
  }

  /**
   * How long the caller's next wait on the doorbell spins before it sleeps, in ns (0: sleep at
   * once); tell {@linkcode spun} how it went. It spins only when that pays for the vCPU whose turn
   * was handed back last (its run thread on another CPU than this thread, and no other vCPU in the
   * guest on either, judged at that hand-back), and not for the next {@linkcode SPIN_BACKOFF} waits after a spin that ran
   * out (a guest that computes, or waits for a timer).
   */
  spinNs(): number {
    if (this.#spinSkip > 0) {
      this.#spinSkip--;
      return 0;
    }
    return this.#lastPays ? SPIN_MAX_US * 1000 : 0;
  }

  /** After a wait that spun ({@linkcode spinNs} > 0): `hit`, the doorbell rang during the spin. */
  spun(hit: boolean): void {
    if (!hit) this.#spinSkip = SPIN_BACKOFF;
  }

  #setState(i: number, st: number): void {
    Atomics.store(this.#words, 1 + i, st);
    Atomics.notify(this.#words, 1 + i);
  }

  #exit(i: number, kind: VcpuEvent["kind"], detail: string): void {
    this.#emit({ type: "event", id: i, kind, detail });
    this.#exited[i] = true;
    this.#setState(i, ST_EXITED);
  }

  /** One exit of vCPU `i` whose `KVM_RUN` returned `rc`. */
  #handle(i: number, rc: number): void {
    if (rc < 0) {
      if (-rc !== EINTR && -rc !== EAGAIN) this.#exit(i, "error", `KVM_RUN failed: errno ${-rc}`);
      return; // a kick
    }
    const runView = this.#runs[i]!, runDv = this.#runDvs[i]!;
    const u = ABI["kvm_run.exit_union"];
    const reason = runDv.getUint32(ABI["kvm_run.exit_reason"], true);
    switch (reason) {
      case EXIT.IO: {
        const out = runView[u] === 1;
        const size = runView[u + 1]!;
        const port = runDv.getUint16(u + 2, true);
        const count = runDv.getUint32(u + 4, true);
        const off = Number(runDv.getBigUint64(u + 8, true));
        const pio = this.#buses.pio;
        for (let k = 0; k < count; k++) {
          const data = runView.subarray(off + k * size, off + (k + 1) * size);
          if (out) pio.write(port, data);
          else pio.read(port, data);
        }
        break;
      }
      case EXIT.MMIO: {
        const addr = Number(runDv.getBigUint64(u, true));
        const len = runDv.getUint32(u + 16, true);
        const data = runView.subarray(u + 8, u + 8 + len);
        if (runView[u + 20] === 1) this.#buses.mmio.write(addr, data);
        else this.#buses.mmio.read(addr, data);
        break;
      }
      case EXIT.HLT:
        // With the in-kernel irqchip HLT normally stays in the kernel; if it comes out, back off.
        this.hold(i, 1);
        break;
      case EXIT.SHUTDOWN:
        this.#exit(i, "shutdown", "guest triple fault (shutdown exit)");
        return;
      case EXIT.SYSTEM_EVENT: {
        const t = runDv.getUint32(u, true);
        const request: MachineRequest = t === 2 ? "reset" : "poweroff";
        this.#emit({ type: "event", id: i, kind: "request", request, detail: `system event ${t}` });
        this.hold(i, 50);
        break;
      }
      default: {
        const sub = runDv.getUint32(u, true);
        this.#exit(i, "error", `vCPU ${i} stopped: ${exitName(reason)} (suberror/reason ${sub})`);
        return;
      }
    }
    if (this.#pending !== undefined) {
      const request = this.#pending;
      this.#pending = undefined;
      this.#emit({ type: "event", id: i, kind: "request", request, detail: `guest requested ${request}` });
      // The machine will pause or stop the VM; this vCPU does not run the guest further meanwhile.
      this.#parked[i] = true;
    }
  }
}
