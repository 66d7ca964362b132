/**
 * The pause/resume protocol between the main thread and the I/O Worker (like
 * machine/vcpu_control.ts), over one SharedArrayBuffer of Int32 words and one eventfd:
 *
 * - word 0: the request, {@linkcode IO_REQ_RUN} | {@linkcode IO_REQ_PAUSE} | {@linkcode IO_REQ_STOP}
 * - word 1: the Worker's state, {@linkcode IO_ST_RUNNING} | {@linkcode IO_ST_PAUSED} | {@linkcode IO_ST_EXITED}
 *
 * The Worker sleeps in `epoll_wait`, so a request is followed by a write to the control eventfd,
 * which is in its epoll set. Before the Worker acknowledges PAUSED it drains the requests it has
 * in flight (virtio-blk's io_uring), so then every request it took from a ring has completed and
 * its used entry is written:
 * migration can then save the transports and release image locks. While paused the Worker leaves
 * notifications pending in their eventfds; on RUN it processes every queue once (so a restored
 * destination picks up chains the source never saw notified).
 * @module
 */
import { logger } from "../../util/log.ts";
import { closeFd, createEventfd, signalEventfd } from "../../sys/eventfd.ts";
import type { IoPlan } from "./io_plan.ts";
import { workerUrl } from "../../util/bundled.ts";

export const IO_REQ_RUN = 0, IO_REQ_PAUSE = 1, IO_REQ_STOP = 2;
export const IO_ST_RUNNING = 0, IO_ST_PAUSED = 1, IO_ST_EXITED = 2;
/** Word indices. */
export const IO_W_REQ = 0, IO_W_STATE = 1;

/** The first message the I/O Worker receives. */
export interface IoInit {
  type: "init";
  plan: IoPlan;
  control: SharedArrayBuffer;
  controlFd: number;
}

/** What the I/O Worker posts back. */
export type IoMessage = { type: "ready"; tid: number } | { type: "error"; detail: string };

const log = logger("io-worker");

/** Main-thread side: starts the Worker and pauses/resumes/stops it. */
export class IoControl {
  readonly shared: SharedArrayBuffer;
  readonly controlFd: number;
  readonly #w: Int32Array;
  readonly #worker: Worker;
  #errors: string[] = [];

  private constructor(worker: Worker) {
    this.shared = new SharedArrayBuffer(16);
    this.#w = new Int32Array(this.shared);
    Atomics.store(this.#w, IO_W_REQ, IO_REQ_PAUSE); // devices start quiet until the VM runs
    Atomics.store(this.#w, IO_W_STATE, IO_ST_PAUSED);
    this.controlFd = createEventfd("the I/O Worker's control");
    this.#worker = worker;
  }

  /**
   * Starts the I/O Worker (paused) and waits for its ready message.
   * @param options.url the worker module (default io_worker.ts beside this file; `deno compile`
   *   needs it passed with `--include`)
   */
  static async start(options: { plan: IoPlan; url?: URL; timeoutMs?: number }): Promise<IoControl> {
    const url = options.url ?? workerUrl("./io_worker.ts", import.meta.url);
    const c = new IoControl(new Worker(url, { type: "module" }));
    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error("Cannot start the I/O Worker: no ready message")),
        options.timeoutMs ?? 10000,
      );
      c.#worker.onmessage = (e: MessageEvent<IoMessage>) => {
        if (e.data.type === "ready") {
          clearTimeout(timer);
          resolve();
        } else {
          c.#errors.push(e.data.detail);
          log.error("%s", e.data.detail);
          clearTimeout(timer);
          reject(new Error(`Cannot run the I/O Worker: ${e.data.detail}`));
        }
      };
      c.#worker.onerror = (e) => {
        e.preventDefault();
        clearTimeout(timer);
        reject(new Error(`Cannot run the I/O Worker: ${e.message}`));
      };
    });
    const init: IoInit = { type: "init", plan: options.plan, control: c.shared, controlFd: c.controlFd };
    c.#worker.postMessage(init);
    await ready;
    return c;
  }

  /** The Worker's state word. */
  get state(): number {
    return Atomics.load(this.#w, IO_W_STATE);
  }

  /** Errors the Worker reported. */
  get errors(): readonly string[] {
    return this.#errors;
  }

  /** Lets the Worker process queues. */
  resume(): void {
    Atomics.store(this.#w, IO_W_REQ, IO_REQ_RUN);
    Atomics.notify(this.#w, IO_W_REQ);
    signalEventfd(this.controlFd);
  }

  /** Asks the Worker to finish its pass and stop processing; resolves once it acknowledged. */
  async pause(timeoutMs = 5000): Promise<void> {
    Atomics.store(this.#w, IO_W_REQ, IO_REQ_PAUSE);
    signalEventfd(this.controlFd);
    await this.#await((s) => s !== IO_ST_RUNNING, timeoutMs, "pause");
  }

  /** Stops the Worker, waits for it to leave its loop, and terminates it. */
  async stop(timeoutMs = 3000): Promise<void> {
    Atomics.store(this.#w, IO_W_REQ, IO_REQ_STOP);
    Atomics.notify(this.#w, IO_W_REQ);
    signalEventfd(this.controlFd);
    try {
      await this.#await((s) => s === IO_ST_EXITED, timeoutMs, "stop");
    } finally {
      this.#worker.terminate();
      closeFd(this.controlFd);
    }
  }

  async #await(done: (state: number) => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = this.state;
      if (done(s)) return;
      if (Date.now() > deadline) {
        throw new Error(`Cannot ${what} the I/O Worker: no answer in ${timeoutMs} ms`);
      }
      const r = Atomics.waitAsync(this.#w, IO_W_STATE, s, 20);
      if (r.async) await r.value;
    }
  }
}
