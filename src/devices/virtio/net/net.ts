/**
 * virtio-net (virtio 1.x §5.1) over a tap: one RX queue (0), one TX queue (1) and a control queue
 * (2). Features: `VIRTIO_NET_F_MAC` (the MAC in config space), `VIRTIO_NET_F_STATUS` (link up,
 * and `VIRTIO_NET_S_ANNOUNCE`), `VIRTIO_NET_F_CTRL_VQ` + `VIRTIO_NET_F_CTRL_RX` +
 * `VIRTIO_NET_F_GUEST_ANNOUNCE`, indirect descriptors and event idx. No checksum or segmentation
 * offloads: frames are complete on both sides.
 *
 * After a migration the destination calls {@linkcode VirtioNet.announce} (the driver, when it
 * negotiated GUEST_ANNOUNCE, sends its own gratuitous ARP/NA and acks through the control queue)
 * and {@linkcode VirtioNet.selfAnnounce}, which sends QEMU's RARP frames (ethertype 0x8035) with the
 * guest's MAC on the tap, so switches relearn the port at once whatever the guest does.
 *
 * Two faces, like block: {@linkcode VirtioNet} (main thread: tap, MAC, announce, `Migratable`
 * `"virtio-net/<id>"`) and {@linkcode NetHandler} (I/O Worker: RX, TX, control). Frames move
 * straight between the tap and the guest's buffers, in io_uring batches where the kernel allows
 * (rx_batch.ts, tx_batch.ts), else one `readv`/`writev` per frame.
 *
 * State (net_state.ts): MAC (the driver may change it with `VIRTIO_NET_CTRL_MAC_ADDR_SET`) and the
 * status word. The tap name is configuration.
 * @module
 */
import type { Migratable, StateValue } from "../../device.ts";
import type { GuestMemory } from "../../../memory/guest_memory.ts";
import { logger } from "../../../util/log.ts";
import { type DescriptorChain, readFromChain, writeToChain } from "../queue.ts";
import {
  CHAIN_DEFERRED,
  CHAIN_WAIT_SOURCE,
  STATUS_DRIVER_OK,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  type VirtioDeviceInfo,
  type VirtioPciTransport,
} from "../pci_transport.ts";
import { Tap, tapRead, tapReadv, tapWrite, tapWritev, VNET_HDR_BYTES } from "../../../sys/tap.ts";
import { HostMemory, IovecArray } from "../host_memory.ts";
import { AdaptivePoll } from "../adaptive_poll.ts";
import { RxBatch } from "./rx_batch.ts";
import { TxBatch } from "./tx_batch.ts";
import { NET_STATE_MIN_VERSION, NET_STATE_VERSION, type NetState, parseNetState } from "./net_state.ts";

/** Feature bits. */
export const VIRTIO_NET_F_MAC = 5,
  VIRTIO_NET_F_STATUS = 16,
  VIRTIO_NET_F_CTRL_VQ = 17,
  VIRTIO_NET_F_CTRL_RX = 18;
export const VIRTIO_NET_F_GUEST_ANNOUNCE = 21;
/** Status bits. */
export const VIRTIO_NET_S_LINK_UP = 1, VIRTIO_NET_S_ANNOUNCE = 2;
/** Control classes and commands. */
export const VIRTIO_NET_CTRL_RX = 0, VIRTIO_NET_CTRL_MAC = 1, VIRTIO_NET_CTRL_ANNOUNCE = 3;
export const VIRTIO_NET_CTRL_MAC_TABLE_SET = 0,
  VIRTIO_NET_CTRL_MAC_ADDR_SET = 1,
  VIRTIO_NET_CTRL_ANNOUNCE_ACK = 0;
export const VIRTIO_NET_OK = 0, VIRTIO_NET_ERR = 1;
/** virtio device type. */
export const VIRTIO_ID_NET = 1;
/** Queue indices. */
export const NET_RX = 0, NET_TX = 1, NET_CTRL = 2;
/** Config offsets. */
export const NET_CFG_MAC = 0, NET_CFG_STATUS = 6;
/** Bytes of device config (mac, status, max_virtqueue_pairs, mtu). */
export const NET_CONFIG_BYTES = 12;
/** Largest frame + header ferry moves (64 KiB frames). */
export const NET_MAX_PACKET = VNET_HDR_BYTES + 65536;
/** Buffers per frame moved with readv/writev (longer chains take the copying path). */
const IOV_MAX_SEGMENTS = 64;
/**
 * After the TX ring ran dry, the I/O Worker keeps the driver's notifications off and polls up to
 * this long for more frames (QEMU's iothread polls up to 32 µs the same way): a guest streaming
 * frames then needs no notify exit per burst. The time adapts (adaptive_poll.ts).
 */
const TX_POLL_US = 32;
/** RARP ethertype used by self-announce. */
export const ETH_P_RARP = 0x8035;

export { formatMac, parseMac } from "./mac.ts";

/** The transport-facing description of a net device. */
export function netDeviceInfo(mac: Uint8Array): VirtioDeviceInfo {
  const features = [
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_STATUS,
    VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_CTRL_RX,
    VIRTIO_NET_F_GUEST_ANNOUNCE,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_EVENT_IDX,
  ].reduce((f, b) => f | (1n << BigInt(b)), 0n);
  const config = new Uint8Array(NET_CONFIG_BYTES);
  config.set(mac, NET_CFG_MAC);
  new DataView(config.buffer).setUint16(NET_CFG_STATUS, VIRTIO_NET_S_LINK_UP, true);
  new DataView(config.buffer).setUint16(8, 1, true); // max_virtqueue_pairs (read only with MQ)
  return {
    type: VIRTIO_ID_NET,
    queueSizes: [256, 256, 64],
    features,
    config,
    writableConfig: [],
    pciClass: 0x020000,
  };
}

/** One RARP frame announcing `mac` (QEMU's `announce_self_create`: 60 bytes). */
export function rarpFrame(mac: Uint8Array): Uint8Array {
  const f = new Uint8Array(60);
  const dv = new DataView(f.buffer);
  f.fill(0xff, 0, 6);
  f.set(mac, 6);
  dv.setUint16(12, ETH_P_RARP);
  dv.setUint16(14, 1); // hardware: Ethernet
  dv.setUint16(16, 0x0800); // protocol: IPv4
  f[18] = 6;
  f[19] = 4;
  dv.setUint16(20, 3); // reverse request
  f.set(mac, 22);
  f.set(mac, 32);
  return f;
}

/** `-netdev tap` + `-device virtio-net-pci` options as the machine parsed them. */
export interface NetConfig {
  /** The device id (`-device ...,id=`); the migration id is `"virtio-net/<id>"`. */
  id: string;
  /** The tap interface name (`ifname=`); empty lets the kernel choose. */
  ifname: string;
  mac: Uint8Array;
}

/** What the I/O Worker needs to serve a NIC. Plain data. */
export interface NetBackendPlan {
  deviceId: string;
  tapFd: number;
  ifname: string;
}

/** Device id of a NIC. */
export function netDeviceId(id: string): string {
  return `virtio-net/${id}`;
}

/** The main-thread face of a virtio-net NIC; see the module doc. */
export class VirtioNet implements Migratable {
  readonly id: string;
  readonly stateVersion: number = NET_STATE_VERSION;
  readonly minStateVersion: number = NET_STATE_MIN_VERSION;
  readonly tap: Tap;
  readonly info: VirtioDeviceInfo;
  readonly #log;
  #transport: VirtioPciTransport | undefined;

  /**
   * Opens the tap.
   * @param options.tap an already opened tap (tests), else `ifname` is opened
   */
  constructor(options: { config: NetConfig; tap?: Tap }) {
    this.id = netDeviceId(options.config.id);
    this.#log = logger(this.id);
    if (options.config.mac.length !== 6) {
      throw new RangeError(`Cannot create ${this.id}: mac must be 6 bytes`);
    }
    this.tap = options.tap ?? new Tap(options.config.ifname, options.config.id);
    this.info = netDeviceInfo(options.config.mac);
  }

  /** Connects the transport (its device config holds MAC and status). */
  attach(transport: VirtioPciTransport): void {
    this.#transport = transport;
  }

  #t(): VirtioPciTransport {
    if (!this.#transport) throw new TypeError(`Cannot use ${this.id}: no transport attached`);
    return this.#transport;
  }

  /** The MAC the guest uses now. */
  get mac(): Uint8Array {
    return this.#t().readDeviceConfig(NET_CFG_MAC, 6);
  }

  /** The I/O Worker's plan. */
  backendPlan(): NetBackendPlan {
    return { deviceId: this.id, tapFd: this.tap.fd, ifname: this.tap.ifname };
  }

  /**
   * Asks the driver to announce itself (sets `VIRTIO_NET_S_ANNOUNCE`, config interrupt) when it
   * negotiated GUEST_ANNOUNCE and is running.
   * @returns whether the request was made
   */
  announce(): boolean {
    const t = this.#t();
    if (!t.hasFeature(VIRTIO_NET_F_GUEST_ANNOUNCE) || !(t.status & STATUS_DRIVER_OK)) return false;
    const st = new DataView(t.readDeviceConfig(NET_CFG_STATUS, 2).buffer).getUint16(0, true);
    t.writeDeviceConfig(NET_CFG_STATUS, Uint8Array.of((st | VIRTIO_NET_S_ANNOUNCE) & 0xff, st >> 8), true);
    return true;
  }

  /** Sends one round of RARP frames with the guest's MAC on the tap. */
  selfAnnounceOnce(): void {
    const frame = new Uint8Array(VNET_HDR_BYTES + 60);
    frame.set(rarpFrame(this.mac), VNET_HDR_BYTES);
    const rc = tapWrite(this.tap.fd, frame);
    if (rc < 0) this.#log.warn("Self-announce on tap '%s' failed: errno %d", this.tap.ifname, -rc);
  }

  /**
   * QEMU's `qemu_announce_self` schedule: `rounds` frames, the first now, then after
   * `initialMs`, `initialMs + stepMs`, … capped at `maxMs`.
   */
  async selfAnnounce(
    options: { rounds?: number; initialMs?: number; maxMs?: number; stepMs?: number } = {},
  ): Promise<void> {
    const rounds = options.rounds ?? 5, step = options.stepMs ?? 100, max = options.maxMs ?? 550;
    let delay = options.initialMs ?? 50;
    for (let i = 0; i < rounds; i++) {
      this.selfAnnounceOnce();
      if (i + 1 < rounds) {
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay + step, max);
      }
    }
  }

  save(): StateValue {
    const t = this.#t();
    const s: NetState = {
      mac: t.readDeviceConfig(NET_CFG_MAC, 6),
      status: new DataView(t.readDeviceConfig(NET_CFG_STATUS, 2).buffer).getUint16(0, true),
    };
    return s;
  }

  restore(state: StateValue, version: number): void {
    const s = parseNetState(this.id, state, version);
    const cfg = new Uint8Array(8);
    cfg.set(s.mac, 0);
    new DataView(cfg.buffer).setUint16(6, s.status, true);
    this.#t().writeDeviceConfig(NET_CFG_MAC, cfg, false);
  }

  /** Closes the tap. */
  close(): void {
    this.tap.close();
  }
}

/** Serves the NIC's queues in the I/O Worker; see the module doc. */
export class NetHandler {
  readonly #p: NetBackendPlan;
  readonly #mem: GuestMemory;
  readonly #t: VirtioPciTransport;
  readonly #log;
  readonly #rxBuf = new Uint8Array(NET_MAX_PACKET);
  readonly #txBuf = new Uint8Array(NET_MAX_PACKET);
  readonly #host: HostMemory;
  readonly #iov = new IovecArray(IOV_MAX_SEGMENTS);
  readonly #txPoll = new AdaptivePoll(TX_POLL_US);
  readonly #scratchAddr: number;
  readonly #rx = (chain: DescriptorChain): number | undefined => this.#fillRx(chain);
  readonly #tx = (chain: DescriptorChain): number => this.#takeTx(chain);
  /** TX in io_uring batches (tx_batch.ts); undefined: one writev per frame. */
  readonly #txBatch: TxBatch | undefined;
  readonly #txFlush = (): boolean => this.#txBatch?.flush() ?? false;
  /** RX in io_uring batches (rx_batch.ts); undefined: one readv per frame. */
  readonly #batch: RxBatch | undefined;
  readonly #hasPending = (): boolean => this.#rxPending > 0;
  /** Bytes of a received frame waiting for an RX buffer (0: none). */
  #rxPending = 0;
  #rxNeedsBuffers = false;
  #resets: number;
  /** Counters for tests and diagnostics. */
  readonly stats = { rxFrames: 0, txFrames: 0, rxDropped: 0, txDropped: 0 };

  /**
   * @param options.batchRx read RX frames in io_uring batches (rx_batch.ts) where io_uring works
   *   (default true; false: one readv per frame)
   * @param options.batchTx write TX frames in io_uring batches (tx_batch.ts) where io_uring works
   *   (default true; false: one writev per frame)
   */
  constructor(
    options: {
      plan: NetBackendPlan;
      memory: GuestMemory;
      transport: VirtioPciTransport;
      batchRx?: boolean;
      batchTx?: boolean;
    },
  ) {
    this.#p = options.plan;
    this.#mem = options.memory;
    this.#t = options.transport;
    this.#log = logger(options.plan.deviceId);
    this.#resets = this.#t.resetCount;
    this.#host = new HostMemory(this.#mem);
    this.#scratchAddr = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.#rxBuf)));
    this.#batch = options.batchRx === false ? undefined : this.#openBatch();
    this.#txBatch = options.batchTx === false ? undefined : this.#openTxBatch();
  }

  #openTxBatch(): TxBatch | undefined {
    try {
      return new TxBatch({
        tapFd: this.#p.tapFd,
        host: this.#host,
        log: this.#log,
        stats: this.stats,
        complete: (pairs, n) => this.#t.complete(NET_TX, pairs, n),
      });
    } catch (e) {
      this.#log.warn(
        "No io_uring for TX batches (%s): one writev per frame",
        e instanceof Error ? e.message : String(e),
      );
      return undefined;
    }
  }

  #openBatch(): RxBatch | undefined {
    try {
      return new RxBatch({
        tapFd: this.#p.tapFd,
        memory: this.#mem,
        host: this.#host,
        scratchAddr: this.#scratchAddr,
        scratchBytes: this.#rxBuf.length,
        log: this.#log,
        stats: this.stats,
      });
    } catch (e) {
      this.#log.warn(
        "No io_uring for RX batches (%s): one readv per frame",
        e instanceof Error ? e.message : String(e),
      );
      return undefined;
    }
  }

  /** io_uring batches RX has submitted (0 without the batch path). */
  get rxBatches(): number {
    return this.#batch?.batches ?? 0;
  }

  /** io_uring batches TX has submitted (0 without the batch path). */
  get txBatches(): number {
    return this.#txBatch?.batches ?? 0;
  }

  /** Frees the RX and TX rings. */
  close(): void {
    this.#batch?.close();
    this.#txBatch?.close();
  }

  /** Moves frames from the tap into RX buffers until either runs out. */
  processRx(): "idle" | "more" {
    if (this.#t.resetCount !== this.#resets) {
      this.#resets = this.#t.resetCount;
      this.#rxPending = 0;
    }
    const r = this.#batch
      ? this.#batch.pass(this.#t, NET_RX, 256, this.#rx, this.#hasPending)
      : this.#t.process(NET_RX, this.#rx);
    this.#rxNeedsBuffers = this.#ringEmpty();
    return r;
  }

  /**
   * Whether the last RX pass left the ring without a chain (the driver's notifications on): frames
   * cannot be delivered until the driver posts buffers and notifies the queue, so the I/O Worker
   * stops watching the tap meanwhile (QEMU stops polling the tap while virtio-net cannot receive).
   */
  get rxNeedsBuffers(): boolean {
    return this.#rxNeedsBuffers;
  }

  #ringEmpty(): boolean {
    try {
      return this.#t.queue(NET_RX)?.pending() === 0;
    } catch {
      return false; // a broken ring: keep the tap watched, the next pass reports it
    }
  }

  /**
   * Zero copy: readv straight into the chain's buffers, with the scratch buffer last so that a
   * frame too big for the chain is seen (and dropped, as on the copying path).
   */
  #readvRx(chain: DescriptorChain): number | undefined {
    const iov = this.#iov;
    for (;;) {
      iov.count = 0;
      for (const seg of chain.segments) {
        if (seg.writable) iov.push(this.#host.addr(seg.gpa, seg.len), seg.len);
      }
      iov.push(this.#scratchAddr, this.#rxBuf.length);
      const n = tapReadv(this.#p.tapFd, iov.bytes, iov.count);
      if (n <= 0) {
        if (n === 0) return CHAIN_WAIT_SOURCE; // no frame: the tap wakes us, not the driver
        this.#log.warnLimited("Reading tap '%s' failed: errno %d", this.#p.ifname, -n);
        return undefined;
      }
      if (n < VNET_HDR_BYTES) continue;
      if (n > chain.writableBytes) {
        this.stats.rxDropped++;
        this.#log.warnLimited(
          "Dropping a received frame of %d bytes: RX buffer holds %d",
          n,
          chain.writableBytes,
        );
        continue;
      }
      // No offloads negotiated: flags and GSO fields zero, num_buffers 1 (the header is in segment 0).
      const hdr = chain.segments[0]!.gpa;
      const r = this.#mem.regionOf(hdr, VNET_HDR_BYTES)!;
      r.bytes.fill(0, hdr - r.gpa, hdr - r.gpa + VNET_HDR_BYTES);
      r.bytes[hdr - r.gpa + 10] = 1;
      // The kernel wrote guest RAM behind GuestMemory's back: mark the pages (STYLE.md c.10).
      let left = n;
      for (const seg of chain.segments) {
        if (!seg.writable || left === 0) continue;
        const k = Math.min(seg.len, left);
        this.#mem.markDirty(seg.gpa, k);
        left -= k;
      }
      this.stats.rxFrames++;
      return n;
    }
  }

  /** Whether a chain's buffers fit the iovec array and hold the header in their first one. */
  #vectorable(chain: DescriptorChain, writable: boolean): boolean {
    const segs = chain.segments;
    if (segs.length + 1 > IOV_MAX_SEGMENTS) return false;
    const first = segs[0];
    return first !== undefined && first.writable === writable && first.len >= VNET_HDR_BYTES;
  }

  #fillRx(chain: DescriptorChain): number | undefined {
    if (this.#rxPending === 0 && this.#vectorable(chain, true)) return this.#readvRx(chain);
    for (;;) {
      if (this.#rxPending === 0) {
        const n = tapRead(this.#p.tapFd, this.#rxBuf);
        if (n <= 0) {
          if (n === 0) return CHAIN_WAIT_SOURCE;
          this.#log.warnLimited("Reading tap '%s' failed: errno %d", this.#p.ifname, -n);
          return undefined;
        }
        if (n < VNET_HDR_BYTES) continue;
        this.#rxPending = n;
      }
      const n = this.#rxPending;
      if (n > chain.writableBytes) {
        // Too big for the buffers the driver posts: drop it and try the next frame in this chain.
        this.stats.rxDropped++;
        this.#log.warnLimited(
          "Dropping a received frame of %d bytes: RX buffer holds %d",
          n,
          chain.writableBytes,
        );
        this.#rxPending = 0;
        continue;
      }
      const pkt = this.#rxBuf.subarray(0, n);
      // No offloads negotiated: flags and GSO fields must be zero; one buffer per packet.
      pkt.fill(0, 0, VNET_HDR_BYTES);
      pkt[10] = 1;
      writeToChain(this.#mem, chain, 0, pkt);
      this.#rxPending = 0;
      this.stats.rxFrames++;
      return n;
    }
  }

  /** Sends every frame the driver queued for transmission. */
  processTx(): "idle" | "more" {
    this.#txPoll.wake();
    let r: "idle" | "more" = "idle";
    if (!this.#txBatch) r = this.#t.process(NET_TX, this.#tx, 256, this.#txPoll.us);
    else if (this.#t.beginWork()) {
      // Held busy until the staged frames are written: a reset never finds a TX buffer still to read.
      try {
        r = this.#t.process(NET_TX, this.#tx, 256, this.#txPoll.us, this.#txFlush);
      } finally {
        try {
          this.#txBatch.flush(); // nothing staged outlives the pass
        } finally {
          this.#t.endWork();
        }
      }
    }
    this.#txPoll.idle();
    return r;
  }

  /** A TX chain: staged for the next batch, or sent alone (after the staged ones: frames keep their order). */
  #takeTx(chain: DescriptorChain): number {
    const b = this.#txBatch;
    if (!b) return this.#sendTx(chain);
    const n = chain.readableBytes;
    if (n < VNET_HDR_BYTES || n > NET_MAX_PACKET || !TxBatch.takes(chain)) {
      b.flush();
      return this.#sendTx(chain);
    }
    b.stage(chain);
    return CHAIN_DEFERRED;
  }

  #sendTx(chain: DescriptorChain): number {
    {
      const n = chain.readableBytes;
      if (n < VNET_HDR_BYTES || n > NET_MAX_PACKET) {
        this.stats.txDropped++;
        this.#log.warnLimited("Dropping a TX chain of %d bytes", n);
        return 0;
      }
      let rc: number;
      if (this.#vectorable(chain, false)) {
        // Zero copy: writev gathers the frame from the chain's buffers.
        const iov = this.#iov;
        iov.count = 0;
        for (const seg of chain.segments) {
          if (!seg.writable) iov.push(this.#host.addr(seg.gpa, seg.len), seg.len);
        }
        rc = tapWritev(this.#p.tapFd, iov.bytes, iov.count);
      } else {
        const pkt = this.#txBuf.subarray(0, n);
        pkt.set(readFromChain(this.#mem, chain, 0, n));
        rc = tapWrite(this.#p.tapFd, pkt);
      }
      if (rc < 0) {
        this.stats.txDropped++;
        this.#log.warnLimited("Writing tap '%s' failed: errno %d", this.#p.ifname, -rc);
      } else this.stats.txFrames++;
      return 0;
    }
  }

  /** Serves control commands (RX mode, MAC, announce ack). */
  processCtrl(): "idle" | "more" {
    return this.#t.process(NET_CTRL, (chain) => {
      if (chain.readableBytes < 2 || chain.writableBytes < 1) {
        this.#log.warnLimited(
          "Malformed control command: %d readable, %d writable bytes",
          chain.readableBytes,
          chain.writableBytes,
        );
        return 0;
      }
      const [cls, cmd] = readFromChain(this.#mem, chain, 0, 2);
      const ack = this.#control(cls!, cmd!, chain);
      writeToChain(this.#mem, chain, chain.writableBytes - 1, Uint8Array.of(ack));
      return 1;
    });
  }

  #control(cls: number, cmd: number, chain: DescriptorChain): number {
    switch (cls) {
      case VIRTIO_NET_CTRL_RX:
        return VIRTIO_NET_OK; // promisc/allmulti: the tap already delivers everything
      case VIRTIO_NET_CTRL_MAC:
        if (cmd === VIRTIO_NET_CTRL_MAC_ADDR_SET) {
          if (chain.readableBytes < 8) return VIRTIO_NET_ERR;
          this.#t.writeDeviceConfig(NET_CFG_MAC, readFromChain(this.#mem, chain, 2, 6), false);
          return VIRTIO_NET_OK;
        }
        return cmd === VIRTIO_NET_CTRL_MAC_TABLE_SET ? VIRTIO_NET_OK : VIRTIO_NET_ERR;
      case VIRTIO_NET_CTRL_ANNOUNCE: {
        if (cmd !== VIRTIO_NET_CTRL_ANNOUNCE_ACK) return VIRTIO_NET_ERR;
        const st = new DataView(this.#t.readDeviceConfig(NET_CFG_STATUS, 2).buffer).getUint16(0, true);
        const next = st & ~VIRTIO_NET_S_ANNOUNCE;
        this.#t.writeDeviceConfig(NET_CFG_STATUS, Uint8Array.of(next & 0xff, next >> 8), false);
        return VIRTIO_NET_OK;
      }
      default:
        this.#log.warnLimited("Unsupported control command class %d cmd %d", cls, cmd);
        return VIRTIO_NET_ERR;
    }
  }
}
