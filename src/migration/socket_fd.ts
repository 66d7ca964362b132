/**
 * The descriptors behind Deno's migration connections. Deno neither exposes a connection's fd nor
 * sets socket buffer sizes, so ferry finds the fd in `/proc/self/fd` (new since a snapshot, and on
 * the expected address) and tunes it through the shim.
 * @module
 */
import { shim } from "../ffi/shim.ts";

const SOL_SOCKET = 1;
const SO_SNDBUF = 7;
const SO_ACCEPTCONN = 30;
const AF_UNIX = 1;
/** `struct sockaddr_un`: family (2 bytes) and a 108-byte path. */
const SOCKADDR_UN_BYTES = 110;

/**
 * What a unix migration connection asks for as its send buffer. A unix stream socket has only
 * the sender's buffer in flight: at Linux's default (208 KiB) a 4 MiB RAM message takes ~20
 * wake-ups of each side, and the destination ~2,500 reads per 480 MiB; at 4 MiB, ~300. The
 * kernel caps it at `net.core.wmem_max` (docs/migration-performance.md, "Socket buffers").
 */
export const UNIX_SEND_BUFFER_BYTES = 4 * 1024 * 1024;

/** The socket descriptors of this process, by number, with their inode link. */
export function socketFds(): Map<number, string> {
  const out = new Map<number, string>();
  for (const e of Deno.readDirSync("/proc/self/fd")) {
    try {
      const link = Deno.readLinkSync(`/proc/self/fd/${e.name}`);
      if (link.startsWith("socket:")) out.set(Number(e.name), link);
    } catch { /* closed meanwhile */ }
  }
  return out;
}

/** Socket descriptors opened since `before` (a {@linkcode socketFds} snapshot). */
export function newSocketFds(before: Map<number, string>): number[] {
  return [...socketFds()].filter(([fd, link]) => before.get(fd) !== link).map(([fd]) => fd);
}

/** The unix path of a socket's own (`peer` false) or peer's address; undefined if not AF_UNIX. */
export function unixSocketPath(fd: number, peer: boolean): string | undefined {
  const buf = new Uint8Array(SOCKADDR_UN_BYTES);
  const len = Number(shim().ferry_socket_address(fd, peer ? 1 : 0, buf, buf.length));
  if (len < 2 || (buf[0]! | (buf[1]! << 8)) !== AF_UNIX) return undefined;
  const path = buf.subarray(2, Math.min(len, buf.length));
  const nul = path.indexOf(0);
  return new TextDecoder().decode(nul < 0 ? path : path.subarray(0, nul));
}

/** Whether `fd` is a listening socket. */
function listening(fd: number): boolean {
  return Number(shim().ferry_getsockopt_int(fd, SOL_SOCKET, SO_ACCEPTCONN)) === 1;
}

/**
 * The fd of the one unix connection this process made since `before`: unnamed itself, with a
 * named peer (the destination's listening path, as it was bound there). Undefined unless there is
 * exactly one.
 */
export function findConnectedUnix(before: Map<number, string>): number | undefined {
  const found = newSocketFds(before).filter((fd) =>
    !unixSocketPath(fd, false) && !!unixSocketPath(fd, true) && !listening(fd)
  );
  return found.length === 1 ? found[0] : undefined;
}

/**
 * The fd of the one connection accepted since `before` on the unix listener bound at `path`.
 * Undefined unless there is exactly one.
 */
export function findAcceptedUnix(before: Map<number, string>, path: string): number | undefined {
  const found = newSocketFds(before).filter((fd) => unixSocketPath(fd, false) === path && !listening(fd));
  return found.length === 1 ? found[0] : undefined;
}

/**
 * Asks for a send buffer of `bytes` on `fd`; the kernel caps it at `net.core.wmem_max`. Best
 * effort: a refusal leaves the kernel's default.
 */
export function setSendBuffer(fd: number, bytes: number): void {
  shim().ferry_setsockopt_int(fd, SOL_SOCKET, SO_SNDBUF, bytes);
}

/** The send buffer `fd` has, as Linux reports it (twice what was granted: it counts its overhead). */
export function sendBufferBytes(fd: number): number {
  return Number(shim().ferry_getsockopt_int(fd, SOL_SOCKET, SO_SNDBUF));
}
