/**
 * The vCPU run threads and the pause/resume protocol between the main thread and the vCPU Worker.
 *
 * Each vCPU runs on a native run thread (shim/vcpu_thread.zig) that loops `KVM_RUN` and hands
 * every return to the vCPU Worker (vcpu_host.ts) through its `RunBlock`. This class owns the
 * native memory of the blocks, the doorbell and the thread stacks (one mapping), starts and joins
 * the threads, and drives them through one SharedArrayBuffer of Int32 words:
 *
 * - word 0: the request, {@linkcode REQ_RUN} | {@linkcode REQ_PAUSE} | {@linkcode REQ_STOP}
 * - word 1 + i: vCPU i's state, {@linkcode ST_RUNNING} | {@linkcode ST_PAUSED} | {@linkcode ST_EXITED}
 * - word 1 + count: 1 once the host has left its loop after STOP (it touches no native memory after)
 * - word 2 + count + i: a hold for vCPU i in ms ({@linkcode VcpuControl.hold}), taken by the host
 *
 * Pause: set the request, set `kvm_run.immediate_exit = 1` for every vCPU, kick each run thread
 * with a real-time signal (its `KVM_RUN` returns EINTR and the turn comes to the host, which keeps
 * it), ring the doorbell, wait until every state is paused. Resume: clear `immediate_exit`, set the
 * request to run, ring. A paused vCPU is outside `KVM_RUN`: its state may be read and written from
 * the main thread (migration, QMP).
 *
 * With `runOnHost` (a VM of one vCPU) no run thread starts: the vCPU Worker runs the vCPU on its own
 * thread and puts its tid in the block, so the kicks above reach it the same way.
 * @module
 */
import { ABI } from "../ffi/abi.ts";
import { check } from "../ffi/errno.ts";
import { RUN_BLOCK, shim, TURN_HOST, TURN_QUIT, viewAt } from "../ffi/shim.ts";
import { KVM } from "../kvm/ioctls.ts";

/** Where the host finds the VM's vCPUs (plain data; every address is in this process). */
export interface VcpuHostPlan {
  /** Address of the first `RunBlock`; block i is at `blocks + i * stride`. */
  blocks: bigint;
  stride: number;
  /** Address of the doorbell (u32 futex word). */
  doorbell: bigint;
  /** Each vCPU's `kvm_run` mapping. */
  runs: { addr: bigint; size: number }[];
  /** The control words (this file). */
  control: SharedArrayBuffer;
  /**
   * The host thread runs vCPU 0's `KVM_RUN` itself (no run thread; a VM of one vCPU): an exit is
   * handled on the thread it came out on, as in QEMU, instead of waking a second thread each way.
   */
  runOnHost: boolean;
}

export const REQ_RUN = 0;
export const REQ_PAUSE = 1;
export const REQ_STOP = 2;
export const ST_RUNNING = 0;
export const ST_PAUSED = 1;
export const ST_EXITED = 2;
/** Signal used to kick vCPU threads out of KVM_RUN (SIGRTMIN+6 in glibc numbering). */
export const KICK_SIGNAL = 40;

/** Bytes between two run blocks: one cache line each, so vCPUs do not share one. */
const BLOCK_STRIDE = 64;
/** Each run thread's stack (only touched pages become resident: a few KiB). */
const STACK_BYTES = 256 * 1024;
const PAGE = 4096;
const PROT_RW = 3, MAP_PRIVATE_ANON_NORESERVE = 0x02 | 0x20 | 0x4000;

/**
 * Waits until `words[index]` is no longer `value`, at most `ms`. `Atomics.waitAsync` alone does not
 * keep Deno's event loop alive, so a timer runs beside it (and is cleared).
 */
async function waitWord(words: Int32Array, index: number, value: number, ms: number): Promise<void> {
  const r = Atomics.waitAsync(words, index, value, ms);
  if (!r.async) return;
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([r.value, new Promise<void>((resolve) => timer = setTimeout(resolve, ms + 1))]);
  clearTimeout(timer);
}

/** Main-thread side of the protocol for all vCPUs. */
export class VcpuControl {
  readonly shared: SharedArrayBuffer;
  readonly #words: Int32Array;
  readonly #runs: Uint8Array[];
  readonly #pid: number;
  readonly #mapAddr: bigint;
  readonly #mapBytes: number;
  readonly #blocks: Int32Array[];
  readonly #bell: Int32Array;
  readonly #plan: VcpuHostPlan;
  #started = false;
  #released = false;
  #hostServing = false;

  /**
   * Maps the run blocks and stacks; the threads start with {@linkcode start}.
   * @param vcpus each vCPU's fd and `kvm_run` mapping
   * @param options.spin iterations a run thread spins on its turn before it sleeps (default 0)
   * @param options.runOnHost the vCPU Worker runs the only vCPU itself ({@linkcode VcpuHostPlan.runOnHost})
   * @throws {RangeError} for `runOnHost` with more than one vCPU
   */
  constructor(
    vcpus: { fd: number; runAddr: bigint; runSize: number }[],
    options: { spin?: number; runOnHost?: boolean } = {},
  ) {
    const count = vcpus.length;
    const runOnHost = options.runOnHost ?? false;
    if (runOnHost && count !== 1) throw new RangeError(`runOnHost needs one vCPU, not ${count}`);
    this.shared = new SharedArrayBuffer(4 * (2 + 2 * count));
    this.#words = new Int32Array(this.shared);
    this.#runs = vcpus.map((v) => viewAt(v.runAddr, v.runSize));
    this.#pid = Number(shim().ferry_getpid());
    Atomics.store(this.#words, 0, REQ_PAUSE); // vCPUs start paused until the VM starts
    for (let i = 0; i < count; i++) Atomics.store(this.#words, 1 + i, ST_PAUSED);
    // [doorbell + blocks: one page-rounded header][stack 0][stack 1]...
    const header = Math.ceil((BLOCK_STRIDE * (1 + count)) / PAGE) * PAGE;
    this.#mapBytes = header + STACK_BYTES * count;
    this.#mapAddr = BigInt(check(
      shim().ferry_mmap(0n, BigInt(this.#mapBytes), PROT_RW, MAP_PRIVATE_ANON_NORESERVE, -1, 0n),
      "map the vCPU run blocks",
    ));
    const doorbell = this.#mapAddr;
    const blocks = this.#mapAddr + BigInt(BLOCK_STRIDE);
    this.#bell = new Int32Array(viewAt(doorbell, 4).buffer);
    this.#blocks = vcpus.map((v, i) => {
      const view = viewAt(blocks + BigInt(i * BLOCK_STRIDE), RUN_BLOCK.size);
      const dv = new DataView(view.buffer);
      dv.setInt32(RUN_BLOCK.turn, TURN_HOST, true);
      dv.setInt32(RUN_BLOCK.fd, v.fd, true);
      dv.setBigUint64(RUN_BLOCK.req, KVM.RUN, true);
      dv.setBigUint64(RUN_BLOCK.doorbell, doorbell, true);
      dv.setUint32(RUN_BLOCK.spin, options.spin ?? 0, true);
      dv.setInt32(RUN_BLOCK.cpu, -1, true);
      return new Int32Array(view.buffer);
    });
    this.#plan = {
      blocks,
      stride: BLOCK_STRIDE,
      doorbell,
      runs: vcpus.map((v) => ({ addr: v.runAddr, size: v.runSize })),
      control: this.shared,
      runOnHost,
    };
  }

  /** What the vCPU host needs (plain data); from now on {@linkcode stop} waits for it to leave. */
  hostPlan(): VcpuHostPlan {
    this.#hostServing = true;
    return this.#plan;
  }

  /**
   * Starts every run thread (each waits for its first turn) and waits until each has its tid. With
   * `runOnHost` there is none: the host sets the tid when it serves.
   */
  async start(timeoutMs = 5000): Promise<void> {
    if (this.#plan.runOnHost) return;
    const header = Math.ceil((BLOCK_STRIDE * (1 + this.count)) / PAGE) * PAGE;
    for (let i = 0; i < this.count; i++) {
      const stack = this.#mapAddr + BigInt(header + i * STACK_BYTES);
      check(
        shim().ferry_vcpu_thread_start(this.#blockAddr(i), stack, BigInt(STACK_BYTES)),
        `start the run thread of vCPU ${i}`,
      );
    }
    this.#started = true;
    const deadline = Date.now() + timeoutMs;
    while (this.tids().some((t) => t === 0)) {
      if (Date.now() > deadline) throw new Error(`Cannot start vCPU threads: no answer in ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  #blockAddr(i: number): bigint {
    return this.#plan.blocks + BigInt(i * BLOCK_STRIDE);
  }

  get count(): number {
    return this.#runs.length;
  }

  /** Thread ids of the run threads (0 before one started or after it left). */
  tids(): number[] {
    return this.#blocks.map((b) => Atomics.load(b, RUN_BLOCK.tid / 4));
  }

  state(i: number): number {
    return Atomics.load(this.#words, 1 + i);
  }

  /** True when every vCPU that has not exited is paused. */
  allPaused(): boolean {
    for (let i = 0; i < this.count; i++) if (this.state(i) === ST_RUNNING) return false;
    return true;
  }

  /** Wakes the vCPU Worker to look at the request and the turns. */
  #ring(): void {
    Atomics.add(this.#bell, 0, 1);
    shim().ferry_futex_wake(this.#plan.doorbell, 0x7fffffff);
  }

  /** Kicks vCPU `i` out of `KVM_RUN` (no-op when it is not in it). */
  kick(i: number): void {
    const tid = Atomics.load(this.#blocks[i]!, RUN_BLOCK.tid / 4);
    if (tid > 0) shim().ferry_tgkill(this.#pid, tid, KICK_SIGNAL);
  }

  /**
   * Keeps vCPU `i` out of the guest for `ms` from now: it is kicked out of `KVM_RUN` and its turn
   * stays with the host until then (pause, resume and stop work as usual meanwhile). The primitive
   * for throttling: call it once per period with the share of the period to take away.
   */
  hold(i: number, ms: number): void {
    if (!(ms > 0)) return;
    Atomics.store(this.#words, 2 + this.count + i, Math.min(Math.ceil(ms), 0x7fffffff));
    this.kick(i);
    this.#ring();
  }

  /** Asks every vCPU to leave KVM_RUN and waits until all are paused (or exited). */
  async pause(timeoutMs = 5000): Promise<void> {
    Atomics.store(this.#words, 0, REQ_PAUSE);
    const deadline = Date.now() + timeoutMs;
    for (let i = 0; i < this.count; i++) {
      this.#runs[i]![ABI["kvm_run.immediate_exit"]] = 1;
      this.kick(i);
    }
    this.#ring();
    for (let i = 0; i < this.count; i++) {
      let kicks = 0;
      while (this.state(i) === ST_RUNNING) {
        if (Date.now() > deadline) throw new Error(`Cannot pause vCPU ${i}: no answer in ${timeoutMs} ms`);
        await waitWord(this.#words, 1 + i, ST_RUNNING, 20);
        // A kick can land before the thread enters KVM_RUN; immediate_exit covers that, but
        // kick again now and then to be safe.
        if (++kicks % 5 === 0) {
          this.kick(i);
          this.#ring();
        }
      }
    }
  }

  /** Lets every vCPU run again. */
  resume(): void {
    for (let i = 0; i < this.count; i++) this.#runs[i]![ABI["kvm_run.immediate_exit"]] = 0;
    Atomics.store(this.#words, 0, REQ_RUN);
    Atomics.notify(this.#words, 0);
    this.#ring();
  }

  /** Ends the vCPU Worker's loop and every run thread; waits until the threads have left. */
  async stop(timeoutMs = 3000): Promise<void> {
    Atomics.store(this.#words, 0, REQ_STOP);
    Atomics.notify(this.#words, 0);
    for (let i = 0; i < this.count; i++) {
      this.#runs[i]![ABI["kvm_run.immediate_exit"]] = 1;
      Atomics.store(this.#blocks[i]!, RUN_BLOCK.turn / 4, TURN_QUIT);
      shim().ferry_futex_wake(this.#blockAddr(i), 1);
      this.kick(i);
    }
    this.#ring();
    const deadline = Date.now() + timeoutMs;
    while (this.#started && this.tids().some((t) => t !== 0) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 1));
      this.tids().forEach((t, i) => t !== 0 && this.kick(i));
    }
    // The host may be in the middle of a pass: wait until it has left (it rings on every change).
    while (this.#hostServing && Atomics.load(this.#words, 1 + this.count) === 0 && Date.now() < deadline) {
      this.#ring();
      await waitWord(this.#words, 1 + this.count, 0, 5);
    }
    for (let i = 0; i < this.count; i++) Atomics.store(this.#words, 1 + i, ST_EXITED);
  }

  /**
   * Joins the run threads and unmaps their blocks and stacks, after {@linkcode stop} and once the
   * vCPU Worker is gone. Threads that did not leave keep their memory (never unmapped under them).
   */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    if (this.#hostServing && Atomics.load(this.#words, 1 + this.count) === 0) return; // still looking
    if (this.#started) {
      if (this.tids().some((t) => t !== 0)) return;
      for (let i = 0; i < this.count; i++) shim().ferry_vcpu_thread_join(this.#blockAddr(i));
    }
    shim().ferry_munmap(this.#mapAddr, BigInt(this.#mapBytes));
  }
}
