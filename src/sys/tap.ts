/**
 * A tap interface opened through `/dev/net/tun` (`TUNSETIFF` with `IFF_TAP | IFF_NO_PI |
 * IFF_VNET_HDR`), non-blocking, with a 12-byte virtio-net header (`TUNSETVNETHDRSZ`) in front of
 * every frame, the virtio 1.x header layout, so TX chains pass through unchanged. No offloads are
 * enabled (`TUNSETOFFLOAD 0`), so the host stack hands over fully checksummed, unsegmented frames.
 *
 * The fd is process-wide: the I/O Worker reads and writes it from its own thread, the main thread
 * writes the self-announce frames after a migration.
 * @module
 */
import { check } from "../ffi/errno.ts";
import { shim } from "../ffi/shim.ts";
import { closeFd, O_NONBLOCK, O_RDWR, openFd, readFd, readvFd, writeFd, writevFd } from "./fd.ts";

const TUNSETIFF = 0x400454can, TUNSETOFFLOAD = 0x400454d0n, TUNSETVNETHDRSZ = 0x400454d8n;
const IFF_TAP = 0x0002, IFF_NO_PI = 0x1000, IFF_VNET_HDR = 0x4000;
const IFNAMSIZ = 16, IFREQ_BYTES = 40;
const EAGAIN = 11;
/** The virtio-net header ferry uses on the tap (virtio 1.x: with `num_buffers`). */
export const VNET_HDR_BYTES = 12;

/** An open tap; see the module doc. */
export class Tap {
  readonly fd: number;
  /** The interface name the kernel gave (the requested one, or `tapN`). */
  readonly ifname: string;
  #closed = false;

  /**
   * Opens (creating if needed) tap interface `ifname`.
   * @param owner the netdev id, for messages
   * @throws {Error} naming the interface when `/dev/net/tun` or `TUNSETIFF` refuses
   */
  constructor(ifname: string, owner: string) {
    const name = new TextEncoder().encode(ifname);
    if (name.length >= IFNAMSIZ) {
      throw new RangeError(`Cannot open tap '${ifname}' of netdev '${owner}': name longer than 15 bytes`);
    }
    const s = shim();
    this.fd = openFd("/dev/net/tun", O_RDWR | O_NONBLOCK, `/dev/net/tun for netdev '${owner}'`);
    try {
      const ifr = new Uint8Array(IFREQ_BYTES);
      ifr.set(name);
      new DataView(ifr.buffer).setUint16(IFNAMSIZ, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, true);
      check(
        s.ferry_ioctl_ptr(this.fd, TUNSETIFF, ifr),
        `attach tap '${ifname}' of netdev '${owner}' (TUNSETIFF)`,
      );
      const end = ifr.indexOf(0);
      this.ifname = new TextDecoder().decode(ifr.subarray(0, end < 0 ? IFNAMSIZ : end));
      const hdr = new Int32Array([VNET_HDR_BYTES]);
      check(
        s.ferry_ioctl_ptr(this.fd, TUNSETVNETHDRSZ, new Uint8Array(hdr.buffer)),
        `set the vnet header size of tap '${ifname}'`,
      );
      check(s.ferry_ioctl_val(this.fd, TUNSETOFFLOAD, 0n), `turn offloads off on tap '${ifname}'`);
    } catch (e) {
      closeFd(this.fd);
      throw e;
    }
  }

  /** Closes the fd (a non-persistent tap disappears with it). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFd(this.fd);
  }
}

/**
 * Reads one frame (with its vnet header) from a non-blocking tap fd.
 * @returns bytes read, or 0 when none is waiting; -errno on other errors
 */
export function tapRead(fd: number, buf: Uint8Array): number {
  const rc = readFd(fd, buf);
  return rc === -EAGAIN ? 0 : rc;
}

/**
 * Writes one frame (vnet header first) to a tap fd.
 * @returns bytes written, or -errno (-EAGAIN when the tap queue is full: the frame is dropped)
 */
export function tapWrite(fd: number, frame: Uint8Array): number {
  return writeFd(fd, frame);
}

/**
 * Reads one frame into the `count` buffers of `iov` (readv: zero copy into guest RAM).
 * @returns bytes read, or 0 when none is waiting; -errno on other errors
 */
export function tapReadv(fd: number, iov: Uint8Array<ArrayBuffer>, count: number): number {
  const rc = readvFd(fd, iov, count);
  return rc === -EAGAIN ? 0 : rc;
}

/**
 * Writes one frame gathered from the `count` buffers of `iov` (writev).
 * @returns bytes written, or -errno (-EAGAIN when the tap queue is full: the frame is dropped)
 */
export function tapWritev(fd: number, iov: Uint8Array<ArrayBuffer>, count: number): number {
  return writevFd(fd, iov, count);
}
