/**
 * THE native boundary: the only file that calls `Deno.dlopen`. Declares every symbol of
 * `libferry_shim.so` (shim/shim.zig) with its C types, and finds the library:
 * `FERRY_SHIM` env → `zig-out/lib/` beside the sources (`../lib/` beside the bundle,
 * `zig-out/js/`) → an embedded copy (deno compile `--include`), written to a private temp file
 * first because `dlopen(3)` needs a real file.
 * @module
 */

import { isBundled } from "../util/bundled.ts";

/** The symbol table; every function returns `>= 0` or `-errno` unless noted. */
export const symbols = {
  ferry_open: { parameters: ["buffer", "i32", "u32"], result: "isize" }, // const char *path, int flags, mode_t mode
  ferry_close: { parameters: ["i32"], result: "isize" }, // int fd
  ferry_ioctl_ptr: { parameters: ["i32", "u64", "buffer"], result: "isize" }, // int fd, ulong req, void *arg
  ferry_ioctl_val: { parameters: ["i32", "u64", "u64"], result: "isize" }, // int fd, ulong req, ulong arg
  ferry_read: { parameters: ["i32", "buffer", "u64"], result: "isize" }, // int fd, void *buf, size_t len
  ferry_write: { parameters: ["i32", "buffer", "u64"], result: "isize" }, // int fd, const void *buf, size_t len
  ferry_pread: { parameters: ["i32", "buffer", "u64", "u64"], result: "isize" }, // fd, buf, len, off
  ferry_pwrite: { parameters: ["i32", "buffer", "u64", "u64"], result: "isize" }, // fd, buf, len, off
  ferry_fsync: { parameters: ["i32"], result: "isize" }, // int fd (fdatasync)
  ferry_flock: { parameters: ["i32", "i32"], result: "isize" }, // int fd, int op
  ferry_fstat_size: { parameters: ["i32"], result: "isize" }, // int fd → st_size
  ferry_mmap: { parameters: ["u64", "u64", "i32", "i32", "i32", "u64"], result: "isize" }, // addr, len, prot, flags, fd, off
  ferry_munmap: { parameters: ["u64", "u64"], result: "isize" }, // addr, len
  ferry_madvise: { parameters: ["u64", "u64", "i32"], result: "isize" }, // addr, len, advice
  ferry_mincore: { parameters: ["u64", "u64", "buffer"], result: "isize" }, // addr, len, unsigned char *vec
  ferry_memfd_create: { parameters: ["buffer", "u32"], result: "isize" }, // const char *name, uint flags
  ferry_ftruncate: { parameters: ["i32", "u64"], result: "isize" }, // int fd, off_t len
  ferry_setsockopt_int: { parameters: ["i32", "i32", "i32", "i32"], result: "isize" }, // fd, level, name, value
  ferry_getsockopt_int: { parameters: ["i32", "i32", "i32"], result: "isize" }, // fd, level, name → value
  ferry_socket_address: { parameters: ["i32", "i32", "buffer", "u32"], result: "isize" }, // fd, peer?, buf, len
  ferry_memcpy: { parameters: ["u64", "u64", "u64"], result: "void" }, // dst addr, src addr, len
  ferry_eventfd: { parameters: ["u32", "i32"], result: "isize" }, // uint initval, int flags
  ferry_epoll_create: { parameters: [], result: "isize" },
  ferry_epoll_ctl: { parameters: ["i32", "i32", "i32", "u32", "u64"], result: "isize" }, // epfd, op, fd, events, data
  ferry_epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "isize" }, // epfd, u64 *out, max, timeout ms
  ferry_install_kick_handler: { parameters: ["i32"], result: "isize" }, // int sig
  ferry_gettid: { parameters: [], result: "isize" },
  ferry_getcpu: { parameters: [], result: "i32" }, // the CPU the calling thread runs on now, or -1
  ferry_getpid: { parameters: [], result: "isize" },
  ferry_tgkill: { parameters: ["i32", "i32", "i32"], result: "isize" }, // tgid, tid, sig
  ferry_now_ns: { parameters: [], result: "u64" }, // CLOCK_MONOTONIC ns
  // ---- vCPU run threads (shim/vcpu_thread.zig) ----
  ferry_vcpu_thread_start: { parameters: ["u64", "u64", "u64"], result: "isize" }, // RunBlock *block, stack addr, stack len
  ferry_vcpu_thread_join: { parameters: ["u64"], result: "isize" }, // RunBlock *block
  ferry_vcpu_run_here: { parameters: ["u64"], result: "isize" }, // RunBlock *block
  ferry_futex_wait: { parameters: ["u64", "i32", "i32"], result: "isize" }, // u32 *addr, int expected, int timeout ms
  ferry_futex_wait_spin: { parameters: ["u64", "i32", "u64", "i32"], result: "isize" }, // addr, expected, spin_ns, timeout_ms → 1: changed while spinning
  ferry_futex_wait_async: {
    name: "ferry_futex_wait",
    parameters: ["u64", "i32", "i32"],
    result: "isize",
    nonblocking: true,
  }, // the same wait on a Deno blocking-pool thread (a Promise)
  ferry_futex_wake: { parameters: ["u64", "i32"], result: "isize" }, // u32 *addr, int n
  // ---- io_uring (shim/uring.zig; ring logic in src/devices/virtio/block/uring.ts) ----
  ferry_uring_setup: { parameters: ["u32", "buffer"], result: "isize" }, // entries, struct io_uring_params *
  ferry_uring_enter: { parameters: ["i32", "u32", "u32", "u32"], result: "isize" }, // fd, to_submit, min_complete, flags
  // ---- vectored I/O (shim/vectored.zig; virtio-net) ----
  ferry_readv: { parameters: ["i32", "buffer", "i32"], result: "isize" }, // fd, const struct iovec *, iovcnt
  ferry_writev: { parameters: ["i32", "buffer", "i32"], result: "isize" }, // fd, const struct iovec *, iovcnt
  // ---- ABI table ----
  ferry_abi: { parameters: ["u32"], result: "i64" }, // entry index → size/offset, -1 past the end
  ferry_abi_name: { parameters: ["u32"], result: "pointer" }, // entry index → const char *name
  // ---- CRC32C (shim/crc32c.zig) ----
  ferry_crc32c: { parameters: ["buffer", "u64", "u32"], result: "u32" }, // const u8 *ptr, u64 len, u32 crc → crc
  ferry_copy_crc32c: { parameters: ["buffer", "buffer", "u64", "u32"], result: "u32" }, // u8 *dst, const u8 *src, u64 len, u32 crc → crc of the bytes copied
  ferry_crc32c_pages: { parameters: ["buffer", "u64", "buffer", "u32"], result: "u32" }, // const u8 *src, u64 pages, u32 *page_crcs, u32 crc → crc of all
  ferry_copy_crc32c_pages: { parameters: ["buffer", "buffer", "u64", "buffer", "u32"], result: "u32" }, // u8 *dst, const u8 *src, u64 pages, u32 *page_crcs, u32 crc → crc of all
  ferry_crc32c_impl: { parameters: [], result: "u32" }, // 3 = VPCLMULQDQ folding + crc32 ×3, 2 = crc32 ×3 + PCLMULQDQ, 1 = crc32, 0 = portable
  // ---- SHA-256 (shim/sha256.zig) ----
  ferry_sha256: { parameters: ["buffer", "u64", "buffer"], result: "void" }, // const u8 *ptr, u64 len, u8 out[32]

  // ---- migration data path (issue 9)
  // ferry_madvise on a blocking-pool thread: the destination backs guest RAM ahead of the landing.
  // ferry_scan_runs(base, u32 *bitmap|NULL, u8 *resident|NULL, first, end, u32 *out, max_runs,
  // max_raw, max_visit, u32 *next) → runs: zero/raw page runs as (first, count, zero) triples.
  ferry_scan_runs: {
    parameters: ["buffer", "buffer", "buffer", "u32", "u32", "buffer", "u32", "u32", "u32", "buffer"],
    result: "i64",
  },
  // ---- pages sent by reference (shim/splice.zig; src/migration/splice.ts) ----
  ferry_pipe: { parameters: ["buffer", "u32"], result: "isize" }, // int fds[2], size → capacity
  // sock, pipe_r, pipe_w, capacity, const u8 *src, len, queued, timeout ms, u64 progress[2] → 1 all sent, 0 timed out
  ferry_splice_out_async: {
    name: "ferry_splice_out",
    parameters: ["i32", "i32", "i32", "u64", "buffer", "u64", "u64", "i32", "buffer"],
    result: "isize",
    nonblocking: true,
  },
  // ---- userfaultfd (shim/uffd.zig; post-copy, src/memory/userfault.ts) ----
  ferry_uffd_open: { parameters: ["i32"], result: "isize" }, // int flags (O_CLOEXEC | O_NONBLOCK)
  ferry_uffd_api: { parameters: ["i32", "u64", "buffer"], result: "isize" }, // fd, features, u64 out[2]
  ferry_uffd_register: { parameters: ["i32", "u64", "u64", "u64", "buffer"], result: "isize" }, // fd, start, len, mode, u64 *ioctls
  ferry_uffd_unregister: { parameters: ["i32", "u64", "u64"], result: "isize" }, // fd, start, len
  ferry_uffd_copy: { parameters: ["i32", "u64", "u64", "u64", "u64"], result: "isize" }, // fd, dst, src, len, mode
  ferry_uffd_place: { parameters: ["i32", "u64", "u64", "u64"], result: "isize" }, // fd, dst, src, len → pages that were present
  ferry_uffd_place_async: {
    name: "ferry_uffd_place",
    parameters: ["i32", "u64", "u64", "u64"],
    result: "isize",
    nonblocking: true,
  }, // the same on a Deno blocking-pool thread (a Promise)
  ferry_uffd_zeropage: { parameters: ["i32", "u64", "u64", "u64"], result: "isize" }, // fd, start, len, mode
  ferry_uffd_wake: { parameters: ["i32", "u64", "u64"], result: "isize" }, // fd, start, len
  ferry_uffd_read: { parameters: ["i32", "buffer", "u32"], result: "isize" }, // fd, struct uffd_msg *buf, max → count
  ferry_poll_in: { parameters: ["i32", "i32"], result: "isize" }, // fd, timeout ms → 1 readable, 0 timeout
  ferry_poll_in_async: {
    name: "ferry_poll_in",
    parameters: ["i32", "i32"],
    result: "isize",
    nonblocking: true,
  }, // the same wait on a Deno blocking-pool thread (a Promise)
  ferry_madvise_async: {
    name: "ferry_madvise",
    parameters: ["u64", "u64", "i32"],
    result: "isize",
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** `RunBlock` (shim/vcpu_thread.zig): byte offsets and size, pinned by its Zig test. */
export const RUN_BLOCK = {
  turn: 0,
  rc: 4,
  tid: 8,
  fd: 12,
  req: 16,
  doorbell: 24,
  spin: 32,
  cpu: 36,
  thread: 40,
  size: 48,
} as const;
/** `RunBlock.turn` values. */
export const TURN_THREAD = 0, TURN_HOST = 1, TURN_QUIT = 2;

/** The loaded library's symbols. */
export type Shim = Deno.DynamicLibrary<typeof symbols>["symbols"];

const LIB_NAME = "libferry_shim.so";
/** The path every symbol is opened from, and a handle with no symbols that keeps the library loaded. */
interface Opened {
  path: string;
  lib: Deno.DynamicLibrary<Record<never, never>>;
}
let opened: Opened | undefined;
let table: Shim | undefined;

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function locate(): string {
  const env = Deno.env.get("FERRY_SHIM");
  if (env) return env;
  const beside = new URL(
    isBundled(import.meta.url) ? `../lib/${LIB_NAME}` : `../../zig-out/lib/${LIB_NAME}`,
    import.meta.url,
  );
  if (beside.protocol !== "file:") throw new Error(`Cannot locate ${LIB_NAME}: module is not a local file`);
  const path = decodeURIComponent(beside.pathname);
  if (exists(path)) return path;
  throw new Error(`Cannot locate ${LIB_NAME}: run 'deno task setup' (zig build) or set FERRY_SHIM`);
}

/**
 * Inside a `deno compile` binary the library is served from the embedded file system, which
 * dlopen(3) cannot read: copy it to a private temp file (0700) and open that. Deno would copy it
 * too, but again for every symbol opened ({@linkcode shim}); the path stays valid for them after
 * the file is removed, because dlopen(3) finds a loaded library by its path first.
 */
function openEmbedded(path: string): Opened {
  const bytes = Deno.readFileSync(path);
  const dir = Deno.makeTempDirSync({ prefix: "ferry-shim-" });
  const tmp = `${dir}/${LIB_NAME}`;
  Deno.writeFileSync(tmp, bytes, { mode: 0o700 });
  try {
    return { path: tmp, lib: Deno.dlopen(tmp, {}) };
  } finally {
    // Once mapped, the file is no longer needed.
    Deno.removeSync(dir, { recursive: true });
  }
}

function open(): Opened {
  const path = locate();
  if (Deno.build.standalone) return openEmbedded(path);
  try {
    return { path, lib: Deno.dlopen(path, {}) };
  } catch (cause) {
    throw new Error(`Cannot load ${LIB_NAME} from '${path}'`, { cause });
  }
}

/**
 * Opens (once per thread) and returns the shim's symbols. Each symbol is opened on its first use:
 * Deno compiles a native fast-call trampoline (Cranelift) for every synchronous symbol it opens,
 * ~0.2 ms each per isolate, and a VM uses a third of them at start.
 */
export function shim(): Shim {
  if (!table) {
    const o = opened ??= open();
    // Getters on the prototype: the first read of a symbol opens it and shadows the getter with
    // the function (dlopen(3) of a loaded library only counts a reference).
    const proto: PropertyDescriptorMap = {};
    for (const name of Object.keys(symbols) as (keyof typeof symbols)[]) {
      proto[name] = {
        get(this: object) {
          const fn = Deno.dlopen(o.path, { [name]: symbols[name] }).symbols[name];
          Object.defineProperty(this, name, { value: fn, enumerable: true });
          return fn;
        },
      };
    }
    table = Object.create(Object.create(null, proto)) as Shim;
  }
  return table;
}

/** The symbols {@linkcode shim} has opened so far in this isolate. */
export function openedSymbols(): string[] {
  return table ? Object.keys(table) : [];
}

/** A NUL-terminated copy of `s` for `const char *` parameters. */
export function cString(s: string): Uint8Array<ArrayBuffer> {
  const bytes = new TextEncoder().encode(s);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

/** A typed view over `len` bytes of native memory at `addr` (no ownership: see guest_memory). */
export function viewAt(addr: bigint, len: number): Uint8Array<ArrayBuffer> {
  const ptr = Deno.UnsafePointer.create(addr);
  if (ptr === null) throw new RangeError("Cannot view native memory at address 0");
  return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, len));
}

/** The shim's ABI table: struct name/field → size/offset, from the kernel's own header. */
export function abiTable(): Map<string, number> {
  const s = shim();
  const out = new Map<string, number>();
  for (let i = 0;; i++) {
    const v = Number(s.ferry_abi(i));
    if (v < 0) break;
    const p = s.ferry_abi_name(i);
    if (p === null) break;
    out.set(new Deno.UnsafePointerView(p).getCString(), v);
  }
  return out;
}
