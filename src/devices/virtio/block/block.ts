/**
 * virtio-blk (virtio 1.x §5.2) over a {@linkcode BlockImage}: `VIRTIO_BLK_T_IN`, `OUT`, `FLUSH` and
 * `GET_ID`; read-only drives offer `VIRTIO_BLK_F_RO` and fail writes with `VIRTIO_BLK_S_IOERR`;
 * malformed requests complete with `IOERR` and a rate-limited warning (Firecracker's rule: guest
 * misbehaviour is not a host error), unknown types with `UNSUPP`. The cache mode is the driver's
 * (`VIRTIO_BLK_F_CONFIG_WCE`): in write-through mode each write is followed by fdatasync.
 *
 * Two faces:
 * - {@linkcode VirtioBlk} (main thread): owns the image and its lock, describes the device to the
 *   transport, is the `Migratable` `"virtio-blk/<id>"`, and makes the I/O Worker's plan.
 * - {@linkcode BlockRequestHandler} (I/O Worker): serves one request chain with pread/pwrite straight
 *   between the image and guest RAM (pages marked dirty), or through an aligned bounce buffer when
 *   `direct=on` meets a buffer O_DIRECT cannot take. The I/O Worker normally serves the queue
 *   through io_uring (uring_server.ts, many requests in flight), which hands this handler the
 *   requests that are not plain reads, writes and flushes; it serves the whole queue only where
 *   io_uring is unavailable.
 *
 * State (block_state.ts): the cache mode and the image's identity (capacity, read-only, serial),
 * which must match on the destination. The image path is configuration, not state.
 * @module
 */
import type { Migratable, StateValue } from "../../device.ts";
import type { GuestMemory } from "../../../memory/guest_memory.ts";
import { fsyncFd, preadFd, pwriteFd } from "../../../sys/fd.ts";
import { MAP_ANONYMOUS, MAP_PRIVATE, mapMemory, PROT_RW, unmapMemory, viewAt } from "../../../sys/mman.ts";
import { logger } from "../../../util/log.ts";
import {
  type DescriptorChain,
  readableRanges,
  readFromChain,
  writableRanges,
  writeToChain,
} from "../queue.ts";
import type { VirtioDeviceInfo, VirtioPciTransport } from "../pci_transport.ts";
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC } from "../pci_transport.ts";
import { BlockImage, type BlockImageOptions, SECTOR_BYTES } from "./image.ts";
import {
  BLOCK_STATE_MIN_VERSION,
  BLOCK_STATE_VERSION,
  type BlockState,
  parseBlockState,
} from "./block_state.ts";

/** Request types. */
export const VIRTIO_BLK_T_IN = 0, VIRTIO_BLK_T_OUT = 1, VIRTIO_BLK_T_FLUSH = 4, VIRTIO_BLK_T_GET_ID = 8;
/** Status values. */
export const VIRTIO_BLK_S_OK = 0, VIRTIO_BLK_S_IOERR = 1, VIRTIO_BLK_S_UNSUPP = 2;
/** Feature bits. */
export const VIRTIO_BLK_F_SEG_MAX = 2,
  VIRTIO_BLK_F_RO = 5,
  VIRTIO_BLK_F_FLUSH = 9,
  VIRTIO_BLK_F_CONFIG_WCE = 11;
/** virtio device type. */
export const VIRTIO_ID_BLOCK = 2;
/** Bytes of a request header (type, reserved, sector). */
export const BLK_HEADER_BYTES = 16;
/** Bytes of the GET_ID answer. */
export const VIRTIO_BLK_ID_BYTES = 20;
/** Config offsets. */
export const BLK_CFG_CAPACITY = 0, BLK_CFG_SEG_MAX = 12, BLK_CFG_WRITEBACK = 32;
/** Bytes of config space the device exposes (through `num_queues`). */
export const BLK_CONFIG_BYTES = 36;
/** Queue size offered. */
export const BLK_QUEUE_SIZE = 256;

/** `-drive id=ID,file=PATH,...` (+ the device's `serial=`): the one declaration, config's too. */
export interface DriveConfig {
  /** The drive id (`-drive id=`), unique among drives; the device id is `"virtio-blk/<id>"`. */
  id: string;
  /** Host path of the image, as given. */
  file: string;
  /** @default false */
  readonly: boolean;
  /** Open with `O_DIRECT` (StratoVirt's default is on). @default true */
  direct: boolean;
  /** Up to 20 bytes, returned by GET_ID (`serial=` on `-device`, or QEMU's legacy place on `-drive`). */
  serial?: string;
}

/** Device id of a drive. */
export function blockDeviceId(driveId: string): string {
  return `virtio-blk/${driveId}`;
}

/** Checks and encodes a serial (at most 20 bytes of UTF-8). */
export function encodeSerial(driveId: string, serial: string | undefined): Uint8Array {
  const bytes = new TextEncoder().encode(serial ?? "");
  if (bytes.length > VIRTIO_BLK_ID_BYTES) {
    throw new RangeError(
      `Cannot use serial '${serial}' of drive '${driveId}': longer than ${VIRTIO_BLK_ID_BYTES} bytes`,
    );
  }
  return bytes;
}

/** The transport-facing description of a block device. */
export function blockDeviceInfo(capacitySectors: number, readonly: boolean): VirtioDeviceInfo {
  let features = (1n << BigInt(VIRTIO_BLK_F_SEG_MAX)) | (1n << BigInt(VIRTIO_BLK_F_FLUSH)) |
    (1n << BigInt(VIRTIO_BLK_F_CONFIG_WCE)) | (1n << BigInt(VIRTIO_F_INDIRECT_DESC)) |
    (1n << BigInt(VIRTIO_F_EVENT_IDX));
  if (readonly) features |= 1n << BigInt(VIRTIO_BLK_F_RO);
  const config = new Uint8Array(BLK_CONFIG_BYTES);
  const dv = new DataView(config.buffer);
  dv.setBigUint64(BLK_CFG_CAPACITY, BigInt(capacitySectors), true);
  dv.setUint32(BLK_CFG_SEG_MAX, BLK_QUEUE_SIZE - 2, true);
  config[BLK_CFG_WRITEBACK] = 1;
  return {
    type: VIRTIO_ID_BLOCK,
    queueSizes: [BLK_QUEUE_SIZE],
    features,
    config,
    writableConfig: [{ offset: BLK_CFG_WRITEBACK, length: 1 }],
    pciClass: 0x010000,
  };
}

/** What the I/O Worker needs to serve a drive. Plain data. */
export interface BlockBackendPlan {
  deviceId: string;
  path: string;
  fd: number;
  bufferedFd: number;
  readonly: boolean;
  direct: boolean;
  capacitySectors: number;
  serial: Uint8Array;
}

/** Options for {@linkcode VirtioBlk}. */
export interface VirtioBlkOptions {
  drive: DriveConfig;
  /** Image lock timing (see {@linkcode BlockImageOptions.lock}). @default "now" */
  lock?: BlockImageOptions["lock"];
}

/** The main-thread face of a virtio-blk drive; see the module doc. */
export class VirtioBlk implements Migratable {
  /** `"virtio-blk/<drive id>"`. */
  readonly id: string;
  readonly stateVersion: number = BLOCK_STATE_VERSION;
  readonly minStateVersion: number = BLOCK_STATE_MIN_VERSION;
  readonly image: BlockImage;
  readonly info: VirtioDeviceInfo;
  readonly serial: Uint8Array;
  #transport: VirtioPciTransport | undefined;

  /**
   * Opens and locks the image.
   * @throws {Error} when the image cannot be opened or is locked by another VM; {@linkcode RangeError} for a bad serial
   */
  constructor(options: VirtioBlkOptions) {
    const d = options.drive;
    this.id = blockDeviceId(d.id);
    this.serial = encodeSerial(d.id, d.serial);
    const lock = options.lock;
    this.image = new BlockImage({
      driveId: d.id,
      path: d.file,
      readonly: d.readonly,
      direct: d.direct,
      ...(lock ? { lock } : {}),
    });
    this.info = blockDeviceInfo(this.image.capacitySectors, d.readonly);
  }

  /** Connects the transport this device sits on (its device config holds `writeback`). */
  attach(transport: VirtioPciTransport): void {
    this.#transport = transport;
  }

  /** The I/O Worker's plan. */
  backendPlan(): BlockBackendPlan {
    return {
      deviceId: this.id,
      path: this.image.path,
      fd: this.image.fd,
      bufferedFd: this.image.bufferedFd,
      readonly: this.image.readonly,
      direct: this.image.direct,
      capacitySectors: this.image.capacitySectors,
      serial: this.serial,
    };
  }

  /** Migration switchover on the source: flush and release the image lock. */
  releaseLock(): void {
    this.image.releaseLock();
  }

  /** Destination before resuming, or the source after a failed migration: take the lock again. */
  acquireLock(): void {
    this.image.acquireLock();
  }

  #t(): VirtioPciTransport {
    if (!this.#transport) throw new TypeError(`Cannot use ${this.id}: no transport attached`);
    return this.#transport;
  }

  save(): StateValue {
    const s: BlockState = {
      capacitySectors: this.image.capacitySectors,
      readonly: this.image.readonly,
      serial: this.serial.slice(),
      writeback: this.#t().readDeviceConfig(BLK_CFG_WRITEBACK, 1)[0] !== 0,
    };
    return s;
  }

  restore(state: StateValue, version: number): void {
    const s = parseBlockState(this.id, state, version, {
      capacitySectors: this.image.capacitySectors,
      readonly: this.image.readonly,
      serial: this.serial,
    });
    const t = this.#t();
    const cur = t.readDeviceConfig(BLK_CFG_WRITEBACK, 1)[0] !== 0;
    if (cur !== s.writeback) {
      t.writeDeviceConfig(BLK_CFG_WRITEBACK, Uint8Array.of(s.writeback ? 1 : 0), false);
    }
  }

  /** Closes the image (releases the lock). */
  close(): void {
    this.image.close();
  }
}

const EINVAL = 22;
const BOUNCE_BYTES = 1 << 20;
const ALIGN = 4096;

/** Options for {@linkcode BlockRequestHandler}. */
export interface BlockRequestHandlerOptions {
  plan: BlockBackendPlan;
  memory: GuestMemory;
  /** Where the driver's cache mode lives. */
  transport: { readDeviceConfig(offset: number, length: number): Uint8Array };
}

/** Serves request chains in the I/O Worker; see the module doc. */
export class BlockRequestHandler {
  readonly #p: BlockBackendPlan;
  readonly #mem: GuestMemory;
  readonly #t: BlockRequestHandlerOptions["transport"];
  readonly #log;
  #bounce: Uint8Array<ArrayBuffer> | undefined;
  #bounceAddr = 0n;
  #directFallbackLogged = false;

  constructor(options: BlockRequestHandlerOptions) {
    this.#p = options.plan;
    this.#mem = options.memory;
    this.#t = options.transport;
    this.#log = logger(options.plan.deviceId);
  }

  /**
   * Serves one chain and writes its status byte.
   * @returns bytes written into the chain (data + status), for the used ring
   */
  handle(chain: DescriptorChain): number {
    if (chain.readableBytes < BLK_HEADER_BYTES || chain.writableBytes < 1) {
      this.#log.warnLimited(
        "Malformed request: %d readable, %d writable bytes",
        chain.readableBytes,
        chain.writableBytes,
      );
      if (chain.writableBytes < 1) return 0;
      return this.#finish(chain, VIRTIO_BLK_S_IOERR, 0);
    }
    const hdr = readFromChain(this.#mem, chain, 0, BLK_HEADER_BYTES);
    const dv = new DataView(hdr.buffer);
    const type = dv.getUint32(0, true);
    const sector = Number(dv.getBigUint64(8, true));
    const statusAt = chain.writableBytes - 1;
    try {
      switch (type) {
        case VIRTIO_BLK_T_IN:
          return this.#finish(chain, this.#read(chain, sector, statusAt), statusAt);
        case VIRTIO_BLK_T_OUT:
          return this.#finish(chain, this.#write(chain, sector, chain.readableBytes - BLK_HEADER_BYTES), 0);
        case VIRTIO_BLK_T_FLUSH:
          return this.#finish(chain, this.#flush(), 0);
        case VIRTIO_BLK_T_GET_ID: {
          const n = Math.min(VIRTIO_BLK_ID_BYTES, statusAt);
          const id = new Uint8Array(n);
          id.set(this.#p.serial.subarray(0, n));
          writeToChain(this.#mem, chain, 0, id);
          return this.#finish(chain, VIRTIO_BLK_S_OK, n);
        }
        default:
          this.#log.warnLimited("Unsupported request type %d", type);
          return this.#finish(chain, VIRTIO_BLK_S_UNSUPP, 0);
      }
    } catch (e) {
      this.#log.warnLimited("Request type %d at sector %d failed: %s", type, sector, String(e));
      return this.#finish(chain, VIRTIO_BLK_S_IOERR, 0);
    }
  }

  #finish(chain: DescriptorChain, status: number, dataBytes: number): number {
    writeToChain(this.#mem, chain, chain.writableBytes - 1, Uint8Array.of(status));
    return dataBytes + 1;
  }

  #checkRange(sector: number, len: number, what: string): boolean {
    if (len % SECTOR_BYTES !== 0) {
      this.#log.warnLimited("%s of %d bytes is not a multiple of %d", what, len, SECTOR_BYTES);
      return false;
    }
    if (!Number.isSafeInteger(sector) || sector + len / SECTOR_BYTES > this.#p.capacitySectors) {
      this.#log.warnLimited(
        "%s at sector %d + %d bytes is past the end (%d sectors)",
        what,
        sector,
        len,
        this.#p.capacitySectors,
      );
      return false;
    }
    return true;
  }

  #read(chain: DescriptorChain, sector: number, len: number): number {
    if (!this.#checkRange(sector, len, "Read")) return VIRTIO_BLK_S_IOERR;
    let off = sector * SECTOR_BYTES;
    for (const seg of writableRanges(chain, 0, len)) {
      this.#io("read", seg.gpa, seg.len, off);
      off += seg.len;
    }
    return VIRTIO_BLK_S_OK;
  }

  #write(chain: DescriptorChain, sector: number, len: number): number {
    if (this.#p.readonly) {
      this.#log.warnLimited("Write to read-only drive at sector %d refused", sector);
      return VIRTIO_BLK_S_IOERR;
    }
    if (!this.#checkRange(sector, len, "Write")) return VIRTIO_BLK_S_IOERR;
    let off = sector * SECTOR_BYTES;
    for (const seg of readableRanges(chain, BLK_HEADER_BYTES, len)) {
      this.#io("write", seg.gpa, seg.len, off);
      off += seg.len;
    }
    if (this.#t.readDeviceConfig(BLK_CFG_WRITEBACK, 1)[0] === 0) return this.#flush();
    return VIRTIO_BLK_S_OK;
  }

  #flush(): number {
    if (this.#p.readonly) return VIRTIO_BLK_S_OK;
    const rc = fsyncFd(this.#p.fd);
    if (rc < 0) {
      this.#log.warnLimited("fdatasync failed: errno %d", -rc);
      return VIRTIO_BLK_S_IOERR;
    }
    return VIRTIO_BLK_S_OK;
  }

  /** Moves `len` bytes between guest RAM at `gpa` and the image at `fileOff`. */
  #io(op: "read" | "write", gpa: number, len: number, fileOff: number): void {
    const view = this.#mem.slice(gpa, len);
    if (this.#p.direct) {
      const addr = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(view)));
      if (addr % 512n === 0n && len % 512 === 0) {
        const rc = this.#loop(op, this.#p.fd, view, fileOff);
        if (rc !== -EINVAL) return this.#done(op, rc, gpa, len);
        this.#fallbackNotice();
        return this.#done(op, this.#loop(op, this.#p.bufferedFd, view, fileOff), gpa, len);
      }
      return this.#bounced(op, gpa, view, fileOff);
    }
    this.#done(op, this.#loop(op, this.#p.fd, view, fileOff), gpa, len);
  }

  /** O_DIRECT through the aligned bounce buffer (the file offset is sector-aligned already). */
  #bounced(op: "read" | "write", gpa: number, view: Uint8Array, fileOff: number): void {
    const bounce = this.#bounceBuffer();
    for (let done = 0; done < view.length;) {
      const n = Math.min(BOUNCE_BYTES, view.length - done);
      const chunk = bounce.subarray(0, n);
      let rc: number;
      if (op === "write") {
        chunk.set(view.subarray(done, done + n));
        rc = this.#loop("write", this.#p.fd, chunk, fileOff + done);
        if (rc === -EINVAL) {
          this.#fallbackNotice();
          rc = this.#loop("write", this.#p.bufferedFd, view.subarray(done, done + n), fileOff + done);
        }
        this.#done("write", rc, gpa + done, n);
      } else {
        rc = this.#loop("read", this.#p.fd, chunk, fileOff + done);
        if (rc === -EINVAL) {
          this.#fallbackNotice();
          rc = this.#loop("read", this.#p.bufferedFd, chunk, fileOff + done);
        }
        if (rc < 0) this.#done("read", rc, gpa + done, n);
        this.#mem.write(gpa + done, chunk);
      }
      done += n;
    }
  }

  #bounceBuffer(): Uint8Array<ArrayBuffer> {
    if (!this.#bounce) {
      // Page-aligned anonymous memory.
      this.#bounceAddr = mapMemory(
        BOUNCE_BYTES + ALIGN,
        { prot: PROT_RW, flags: MAP_PRIVATE | MAP_ANONYMOUS },
        "a bounce buffer",
      );
      this.#bounce = viewAt(this.#bounceAddr, BOUNCE_BYTES);
    }
    return this.#bounce;
  }

  /** Logs, once, that O_DIRECT refused a request and buffered I/O serves such requests. */
  noteDirectFallback(): void {
    this.#fallbackNotice();
  }

  #fallbackNotice(): void {
    if (this.#directFallbackLogged) return;
    this.#directFallbackLogged = true;
    this.#log.warn("O_DIRECT refused a request (EINVAL: alignment?); using buffered I/O for such requests");
  }

  #loop(op: "read" | "write", fd: number, buf: Uint8Array, fileOff: number): number {
    return transferAll(op, fd, buf, fileOff);
  }

  #done(op: "read" | "write", rc: number, gpa: number, len: number): void {
    if (rc < 0) throw new Error(`${op} failed: errno ${-rc}`);
    // pread wrote guest RAM behind GuestMemory's back: mark the pages (STYLE.md c.10).
    if (op === "read") this.#mem.markDirty(gpa, len);
  }

  /** Frees the bounce buffer. */
  close(): void {
    if (this.#bounce) unmapMemory(this.#bounceAddr, BOUNCE_BYTES + ALIGN);
    this.#bounce = undefined;
  }
}

/**
 * pread/pwrite of all of `buf` at `fileOff`, retrying short transfers and EINTR; a read that
 * meets the end of file fills zeros. @returns bytes or -errno
 */
export function transferAll(op: "read" | "write", fd: number, buf: Uint8Array, fileOff: number): number {
  let done = 0;
  while (done < buf.length) {
    const part = buf.subarray(done);
    const rc = op === "read" ? preadFd(fd, part, fileOff + done) : pwriteFd(fd, part, fileOff + done);
    if (rc === -4) continue; // EINTR
    if (rc < 0) return rc;
    if (rc === 0) {
      if (op === "write") return -5; // EIO: no progress
      buf.fill(0, done);
      return buf.length;
    }
    done += rc;
  }
  return done;
}
