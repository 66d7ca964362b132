/**
 * The pause/resume protocol between the main thread and the vCPU Workers, over one
 * SharedArrayBuffer (Int32 words):
 *
 * - word 0: the request, {@linkcode REQ_RUN} | {@linkcode REQ_PAUSE} | {@linkcode REQ_STOP}
 * - word 1 + i: vCPU i's state, {@linkcode ST_RUNNING} | {@linkcode ST_PAUSED} | {@linkcode ST_EXITED}
 *
 * Pause: set the request, set `kvm_run.immediate_exit = 1` for every vCPU, kick each vCPU thread
 * with a real-time signal (its blocking `KVM_RUN` returns EINTR), wait until every state is
 * paused. Resume: clear `immediate_exit`, set the request to run, notify.
 * @module
 */
import { ABI } from "../ffi/abi.ts";
import { shim } from "../ffi/shim.ts";

export const REQ_RUN = 0;
export const REQ_PAUSE = 1;
export const REQ_STOP = 2;
export const ST_RUNNING = 0;
export const ST_PAUSED = 1;
export const ST_EXITED = 2;
/** Signal used to kick vCPU threads out of KVM_RUN (SIGRTMIN+6 in glibc numbering). */
export const KICK_SIGNAL = 40;

/** Main-thread side of the protocol for all vCPUs. */
export class VcpuControl {
  readonly shared: SharedArrayBuffer;
  readonly #words: Int32Array;
  readonly #runs: Uint8Array[];
  readonly #tids: number[];
  readonly #pid: number;

  /**
   * @param count number of vCPUs
   * @param runs each vCPU's `kvm_run` view (main thread)
   */
  constructor(count: number, runs: Uint8Array[]) {
    this.shared = new SharedArrayBuffer(4 * (1 + count));
    this.#words = new Int32Array(this.shared);
    this.#runs = runs;
    this.#tids = new Array<number>(count).fill(0);
    this.#pid = Number(shim().ferry_getpid());
    Atomics.store(this.#words, 0, REQ_PAUSE); // vCPUs start paused until the VM starts
    for (let i = 0; i < count; i++) Atomics.store(this.#words, 1 + i, ST_PAUSED);
  }

  get count(): number {
    return this.#runs.length;
  }

  /** Records vCPU `i`'s thread id (from its Worker's ready message). */
  setTid(i: number, tid: number): void {
    this.#tids[i] = tid;
  }

  tids(): readonly number[] {
    return this.#tids;
  }

  state(i: number): number {
    return Atomics.load(this.#words, 1 + i);
  }

  /** True when every vCPU that has not exited is paused. */
  allPaused(): boolean {
    for (let i = 0; i < this.count; i++) if (this.state(i) === ST_RUNNING) return false;
    return true;
  }

  /** Asks every vCPU to leave KVM_RUN and waits until all are paused (or exited). */
  async pause(timeoutMs = 5000): Promise<void> {
    Atomics.store(this.#words, 0, REQ_PAUSE);
    const deadline = Date.now() + timeoutMs;
    for (let i = 0; i < this.count; i++) {
      this.#runs[i]![ABI["kvm_run.immediate_exit"]] = 1;
      const tid = this.#tids[i]!;
      if (tid > 0) shim().ferry_tgkill(this.#pid, tid, KICK_SIGNAL);
    }
    for (let i = 0; i < this.count; i++) {
      let kicks = 0;
      while (this.state(i) === ST_RUNNING) {
        if (Date.now() > deadline) throw new Error(`Cannot pause vCPU ${i}: no answer in ${timeoutMs} ms`);
        const r = Atomics.waitAsync(this.#words, 1 + i, ST_RUNNING, 20);
        if (r.async) await r.value;
        // A kick can land before the thread enters KVM_RUN; immediate_exit covers that, but
        // kick again now and then to be safe.
        if (++kicks % 5 === 0 && this.#tids[i]! > 0) {
          shim().ferry_tgkill(this.#pid, this.#tids[i]!, KICK_SIGNAL);
        }
      }
    }
  }

  /** Lets every vCPU run again. */
  resume(): void {
    for (let i = 0; i < this.count; i++) this.#runs[i]![ABI["kvm_run.immediate_exit"]] = 0;
    Atomics.store(this.#words, 0, REQ_RUN);
    Atomics.notify(this.#words, 0);
  }

  /** Asks every vCPU thread to leave its loop; waits until they have. */
  async stop(timeoutMs = 3000): Promise<void> {
    Atomics.store(this.#words, 0, REQ_STOP);
    Atomics.notify(this.#words, 0);
    for (let i = 0; i < this.count; i++) {
      this.#runs[i]![ABI["kvm_run.immediate_exit"]] = 1;
      if (this.#tids[i]! > 0) shim().ferry_tgkill(this.#pid, this.#tids[i]!, KICK_SIGNAL);
    }
    const deadline = Date.now() + timeoutMs;
    for (let i = 0; i < this.count; i++) {
      while (this.state(i) !== ST_EXITED && Date.now() < deadline) {
        const cur = this.state(i);
        const r = Atomics.waitAsync(this.#words, 1 + i, cur, 20);
        if (r.async) await r.value;
        if (this.#tids[i]! > 0) shim().ferry_tgkill(this.#pid, this.#tids[i]!, KICK_SIGNAL);
      }
    }
  }
}
