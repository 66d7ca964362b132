/**
 * The I/O Worker's loop (DESIGN.md §2): builds each device's queue handlers from the
 * {@linkcode IoPlan}, blocks in a synchronous `epoll_wait` on the queue eventfds (signalled by
 * KVM_IOEVENTFD when the guest notifies), the taps, the drives' io_uring fds (readable when
 * requests completed) and the control eventfd, processes the queues
 * that became ready, and raises interrupts through the transports (irqfds). A queue that used up
 * its per-pass budget is processed again before the next blocking wait, so one busy queue cannot
 * starve the others. A tap is not watched while its NIC's RX ring has no buffer (the driver's
 * notification of the RX queue brings it back), so frames arriving meanwhile do not wake the loop
 * for nothing. Pause/resume/stop follow io_control.ts.
 * @module
 */
import { viewAt } from "../../sys/mman.ts";
import { Epoll, EPOLLET, EPOLLIN } from "../../sys/epoll.ts";
import { GuestMemory } from "../../memory/guest_memory.ts";
import { drainEventfd } from "../../sys/eventfd.ts";
import { logger } from "../../util/log.ts";
import { type TransportVm, VirtioPciTransport } from "./pci_transport.ts";
import { BlockRequestHandler } from "./block/block.ts";
import { BLK_RING_ENTRIES, BlockUringServer } from "./block/uring_server.ts";
import { Uring } from "./block/uring.ts";
import { NET_CTRL, NET_RX, NET_TX, NetHandler } from "./net/net.ts";
import {
  IO_REQ_PAUSE,
  IO_REQ_RUN,
  IO_REQ_STOP,
  IO_ST_EXITED,
  IO_ST_PAUSED,
  IO_ST_RUNNING,
  IO_W_REQ,
  IO_W_STATE,
} from "./io_control.ts";
import type { IoPlan } from "./io_plan.ts";
import { VmFd } from "../../kvm/kvm.ts";

const log = logger("io-worker");

type Work = () => "idle" | "more";

interface Source {
  fd: number;
  /** true: an eventfd, drained before working; false: edge-triggered (taps); "level": level-triggered (io_uring). */
  drain: boolean | "level";
  work: Work;
}

/** A drive's io_uring, or undefined (with a warning) where the kernel refuses one: then requests are served one at a time. */
function openRing(deviceId: string): Uring | undefined {
  try {
    return new Uring(BLK_RING_ENTRIES);
  } catch (e) {
    log.warn(
      "%s: no io_uring (%s); serving requests one at a time with pread/pwrite",
      deviceId,
      e instanceof Error ? e.message : String(e),
    );
    return undefined;
  }
}

/** Options for {@linkcode IoLoop}. */
export interface IoLoopOptions {
  plan: IoPlan;
  control: SharedArrayBuffer;
  controlFd: number;
  /** Guest RAM; built from `plan.memory` with host views when absent. */
  memory?: GuestMemory;
  /** The VM; from `plan.vmFd` when absent (none when it is -1). */
  vm?: TransportVm;
}

/** The loop; see the module doc. */
export class IoLoop {
  readonly memory: GuestMemory;
  readonly transports: VirtioPciTransport[] = [];
  readonly #w: Int32Array;
  readonly #controlFd: number;
  readonly #sources: Source[] = [];
  readonly #all: Work[] = [];
  readonly #closers: Array<() => void> = [];
  /** Wait for requests in flight (before a pause is acknowledged). */
  readonly #drains: Array<() => void> = [];
  readonly #ep: Epoll;

  constructor(options: IoLoopOptions) {
    const plan = options.plan;
    this.#w = new Int32Array(options.control);
    this.#controlFd = options.controlFd;
    this.memory = options.memory ?? new GuestMemory(plan.memory, (addr, size) => viewAt(addr, size));
    const vm = options.vm ?? (plan.vmFd >= 0 ? VmFd.fromRawFd(plan.vmFd) : undefined);
    for (const d of plan.devices) {
      const transport = new VirtioPciTransport({
        plan: d.transport,
        memory: this.memory,
        ...(vm ? { vm } : {}),
      });
      this.transports.push(transport);
      const qfd = (q: number) => d.transport.queueEventfds[q] ?? -1;
      if (d.kind === "virtio-blk") {
        const ring = openRing(d.block.deviceId);
        if (ring) {
          const srv = new BlockUringServer({ plan: d.block, memory: this.memory, transport, ring });
          this.#add(qfd(0), true, () => srv.work());
          this.#add(ring.fd, "level", () => srv.completions());
          this.#drains.push(() => {
            const n = srv.drain();
            if (n > 0) log.info("%s: completed %d requests in flight before pausing", d.block.deviceId, n);
          });
          this.#closers.push(() => srv.close());
        } else {
          const h = new BlockRequestHandler({ plan: d.block, memory: this.memory, transport });
          this.#add(qfd(0), true, () => transport.process(0, (c) => h.handle(c)));
          this.#closers.push(() => h.close());
        }
      } else {
        const h = new NetHandler({ plan: d.net, memory: this.memory, transport });
        const tapFd = d.net.tapFd;
        let tapWatched = true, tapToken = 0n;
        const rx = () => {
          const r = h.processRx();
          // While the RX ring has no buffer, frames wait in the tap: watch it again when the driver posts some.
          if (tapFd >= 0 && h.rxNeedsBuffers === tapWatched) {
            tapWatched = !tapWatched;
            this.#ep.modify(tapFd, tapWatched ? EPOLLIN | EPOLLET : EPOLLET, tapToken, `tap fd ${tapFd}`);
          }
          return r;
        };
        this.#add(qfd(NET_RX), true, rx);
        this.#add(qfd(NET_TX), true, () => h.processTx());
        this.#add(qfd(NET_CTRL), true, () => h.processCtrl());
        tapToken = BigInt(this.#sources.length + 1); // #watch's token of the source added next
        this.#add(tapFd, false, rx);
        this.#closers.push(() => h.close());
      }
    }
    this.#ep = new Epoll("the I/O Worker's epoll set");
    this.#watch(this.#controlFd, 0, EPOLLIN);
    this.#sources.forEach((s, i) =>
      this.#watch(s.fd, i + 1, s.drain === false ? EPOLLIN | EPOLLET : EPOLLIN)
    );
  }

  #add(fd: number, drain: boolean | "level", work: Work): void {
    this.#all.push(work);
    if (fd >= 0) this.#sources.push({ fd, drain, work });
  }

  #watch(fd: number, token: number, events: number): void {
    this.#ep.add(fd, events, BigInt(token), `fd ${fd} in the I/O Worker`);
  }

  /** Processes every queue once (after start/resume: notifications may predate us). */
  processAll(): Set<Work> {
    const more = new Set<Work>();
    for (const w of this.#all) if (this.#run(w) === "more") more.add(w);
    return more;
  }

  #run(w: Work): "idle" | "more" {
    try {
      return w();
    } catch (e) {
      // A host-side failure in one device must not take the others down.
      log.error("Queue processing failed: %s", e instanceof Error ? e.stack ?? e.message : String(e));
      return "idle";
    }
  }

  #setState(s: number): void {
    Atomics.store(this.#w, IO_W_STATE, s);
    Atomics.notify(this.#w, IO_W_STATE);
  }

  /** Runs until a stop request. */
  run(): void {
    const out = this.#ep.tokens;
    let more = new Set<Work>();
    const ready = new Set<Work>();
    let running = false;
    for (;;) {
      const req = Atomics.load(this.#w, IO_W_REQ);
      if (req === IO_REQ_STOP) break;
      if (req === IO_REQ_RUN && !running) {
        // RUN arrived before this loop first saw PAUSE (the Worker starts paused): say so.
        running = true;
        this.#setState(IO_ST_RUNNING);
        more = this.processAll();
        continue;
      }
      if (req === IO_REQ_PAUSE) {
        running = false;
        this.drain(); // no request in flight once PAUSED is seen (migration saves state next)
        this.#setState(IO_ST_PAUSED);
        while (Atomics.load(this.#w, IO_W_REQ) === IO_REQ_PAUSE) {
          Atomics.wait(this.#w, IO_W_REQ, IO_REQ_PAUSE, 1000);
        }
        drainEventfd(this.#controlFd);
        if (Atomics.load(this.#w, IO_W_REQ) === IO_REQ_RUN) {
          running = true;
          this.#setState(IO_ST_RUNNING);
          more = this.processAll();
        }
        continue;
      }
      const n = this.#ep.wait(more.size > 0 ? 0 : -1);
      // Reuse the two sets (no allocation per wakeup): ready = what was left over + what woke.
      ready.clear();
      for (const w of more) ready.add(w);
      more.clear();
      for (let i = 0; i < n; i++) {
        const token = Number(out[i]!);
        if (token === 0) {
          drainEventfd(this.#controlFd);
          continue;
        }
        const src = this.#sources[token - 1];
        if (!src) continue;
        if (src.drain === true) drainEventfd(src.fd);
        ready.add(src.work);
      }
      if (Atomics.load(this.#w, IO_W_REQ) !== IO_REQ_RUN) {
        // Pausing: what became ready is served after resume (processAll), not now.
        continue;
      }
      for (const w of ready) if (this.#run(w) === "more") more.add(w);
    }
    this.close();
    this.#setState(IO_ST_EXITED);
  }

  /** Completes every request in flight. */
  drain(): void {
    for (const d of this.#drains) {
      try {
        d();
      } catch (e) {
        log.error("Draining requests failed: %s", e instanceof Error ? e.stack ?? e.message : String(e));
      }
    }
  }

  /** Drains, then frees the epoll set, rings and bounce buffers. */
  close(): void {
    for (const c of this.#closers) c();
    this.#closers.length = 0;
    this.#ep.close();
  }
}
