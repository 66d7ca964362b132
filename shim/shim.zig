//! ferry's native shim: thin C-ABI wrappers over the Linux syscalls that Deno cannot make itself.
//!
//! Rules (docs/architecture.md): every function returns `>= 0` for a value and `-errno` for a
//! failure (the raw `std.os.linux` result, bit-cast); no allocation (callers pass buffers); no
//! globals beyond the signal handler; no VM policy — anything that needs an `if` about slots,
//! devices or migration belongs in TypeScript.
const std = @import("std");
const linux = std.os.linux;
const abi = @import("abi.zig");
// Topic files export their own ferry_* functions; importing them here links them in.
const crc32c = @import("crc32c.zig");
comptime {
    _ = crc32c;
}

comptime {
    _ = @import("vcpu_thread.zig");
    _ = @import("uring.zig"); // io_uring primitives (virtio-blk)
    _ = @import("vectored.zig"); // readv/writev (virtio-net)
    _ = @import("scan.zig"); // migration data path: page scanning
    _ = @import("uffd.zig"); // userfaultfd (post-copy)
    _ = @import("splice.zig"); // migration data path: pages sent by reference
    _ = @import("sha256.zig"); // the kernel image digest (configuration check)
}

const ret = @import("sys.zig").ret;
const ufd = @import("sys.zig").ufd;

// ---- files and ioctls -------------------------------------------------------------------------

/// open(2) of a NUL-terminated path; returns the fd.
export fn ferry_open(path: [*:0]const u8, flags: c_int, mode: c_uint) isize {
    return ret(linux.syscall4(.openat, ufd(linux.AT.FDCWD), @intFromPtr(path), @as(u32, @bitCast(flags)), mode));
}

export fn ferry_close(fd: c_int) isize {
    return ret(linux.syscall1(.close, ufd(fd)));
}

/// ioctl(2) with a pointer argument (a struct the caller owns).
export fn ferry_ioctl_ptr(fd: c_int, req: u64, arg: ?*anyopaque) isize {
    return ret(linux.syscall3(.ioctl, ufd(fd), req, @intFromPtr(arg)));
}

/// ioctl(2) with an integer argument.
export fn ferry_ioctl_val(fd: c_int, req: u64, arg: u64) isize {
    return ret(linux.syscall3(.ioctl, ufd(fd), req, arg));
}

export fn ferry_read(fd: c_int, buf: [*]u8, len: u64) isize {
    return ret(linux.syscall3(.read, ufd(fd), @intFromPtr(buf), len));
}

export fn ferry_write(fd: c_int, buf: [*]const u8, len: u64) isize {
    return ret(linux.syscall3(.write, ufd(fd), @intFromPtr(buf), len));
}

export fn ferry_pread(fd: c_int, buf: [*]u8, len: u64, off: u64) isize {
    return ret(linux.syscall4(.pread64, ufd(fd), @intFromPtr(buf), len, off));
}

export fn ferry_pwrite(fd: c_int, buf: [*]const u8, len: u64, off: u64) isize {
    return ret(linux.syscall4(.pwrite64, ufd(fd), @intFromPtr(buf), len, off));
}

export fn ferry_fsync(fd: c_int) isize {
    return ret(linux.syscall1(.fdatasync, ufd(fd)));
}

/// flock(2): LOCK_SH=1, LOCK_EX=2, LOCK_NB=4, LOCK_UN=8.
export fn ferry_flock(fd: c_int, op: c_int) isize {
    return ret(linux.syscall2(.flock, ufd(fd), @as(u32, @bitCast(op))));
}

export fn ferry_fstat_size(fd: c_int) isize {
    var st: linux.Stat = undefined;
    const r = linux.syscall2(.fstat, ufd(fd), @intFromPtr(&st));
    if (ret(r) < 0) return ret(r);
    return @intCast(st.size);
}

// ---- memory -----------------------------------------------------------------------------------

/// mmap(2); returns the address (positive in user space) or -errno.
export fn ferry_mmap(addr: u64, len: u64, prot: c_int, flags: c_int, fd: c_int, off: u64) isize {
    return ret(linux.syscall6(.mmap, addr, len, @as(u32, @bitCast(prot)), @as(u32, @bitCast(flags)), ufd(fd), off));
}

export fn ferry_munmap(addr: u64, len: u64) isize {
    return ret(linux.syscall2(.munmap, addr, len));
}

export fn ferry_madvise(addr: u64, len: u64, advice: c_int) isize {
    return ret(linux.syscall3(.madvise, addr, len, @as(u32, @bitCast(advice))));
}

/// mincore(2): one byte per page of `[addr, addr+len)` into `vec`, bit 0 = resident.
export fn ferry_mincore(addr: u64, len: u64, vec: [*]u8) isize {
    return ret(linux.syscall3(.mincore, addr, len, @intFromPtr(vec)));
}

export fn ferry_memfd_create(name: [*:0]const u8, flags: c_uint) isize {
    return ret(linux.syscall2(.memfd_create, @intFromPtr(name), flags));
}

export fn ferry_ftruncate(fd: c_int, len: u64) isize {
    return ret(linux.syscall2(.ftruncate, ufd(fd), len));
}

/// Copies `len` bytes between two raw addresses (guest RAM of two VMs, a view-less memcpy).
export fn ferry_memcpy(dst: u64, src: u64, len: u64) void {
    const d: [*]u8 = @ptrFromInt(dst);
    const s: [*]const u8 = @ptrFromInt(src);
    @memcpy(d[0..len], s[0..len]);
}

// ---- sockets ----------------------------------------------------------------------------------

/// setsockopt(2) of an int option (e.g. SOL_SOCKET/SO_SNDBUF on a socket Deno opened).
export fn ferry_setsockopt_int(fd: c_int, level: c_int, name: c_int, value: c_int) isize {
    var v: c_int = value;
    return ret(linux.setsockopt(fd, level, @bitCast(name), @ptrCast(&v), @sizeOf(c_int)));
}

/// getsockopt(2) of an int option; returns its value (non-negative options only).
export fn ferry_getsockopt_int(fd: c_int, level: c_int, name: c_int) isize {
    var v: c_int = 0;
    var len: linux.socklen_t = @sizeOf(c_int);
    const r = ret(linux.getsockopt(fd, level, @bitCast(name), @ptrCast(&v), &len));
    return if (r < 0) r else v;
}

/// getsockname(2) (`peer` 0) or getpeername(2) (`peer` 1) into `buf`; returns the address length.
export fn ferry_socket_address(fd: c_int, peer: c_int, buf: [*]u8, len: u32) isize {
    var l: linux.socklen_t = len;
    const addr: *linux.sockaddr = @ptrCast(@alignCast(buf));
    const r = ret(if (peer != 0) linux.getpeername(fd, addr, &l) else linux.getsockname(fd, addr, &l));
    return if (r < 0) r else l;
}

// ---- eventfd / epoll --------------------------------------------------------------------------

export fn ferry_eventfd(initval: c_uint, flags: c_int) isize {
    return ret(linux.syscall2(.eventfd2, initval, @as(u32, @bitCast(flags))));
}

export fn ferry_epoll_create() isize {
    return ret(linux.syscall1(.epoll_create1, linux.EPOLL.CLOEXEC));
}

/// epoll_ctl(2) with the event built here: `events` mask and 64-bit user `data`.
export fn ferry_epoll_ctl(epfd: c_int, op: c_int, fd: c_int, events: c_uint, data: u64) isize {
    var ev = linux.epoll_event{ .events = events, .data = .{ .u64 = data } };
    return ret(linux.syscall4(.epoll_ctl, ufd(epfd), @as(u32, @bitCast(op)), ufd(fd), @intFromPtr(&ev)));
}

/// epoll_wait(2) writing only the `data` word of each ready event into `out` (u64 array).
export fn ferry_epoll_wait(epfd: c_int, out: [*]u64, max: c_int, timeout_ms: c_int) isize {
    var evs: [64]linux.epoll_event = undefined;
    const n: usize = @intCast(@min(@max(max, 1), 64));
    const r = linux.syscall4(.epoll_wait, ufd(epfd), @intFromPtr(&evs), n, ufd(timeout_ms));
    const got = ret(r);
    if (got <= 0) return got;
    for (0..@intCast(got)) |i| out[i] = evs[i].data.u64;
    return got;
}

// ---- threads and the vCPU kick ----------------------------------------------------------------

fn kickHandler(_: i32) callconv(.c) void {}

/// Installs a no-op handler for `sig`. A blocking KVM_RUN returns EINTR (KVM never restarts it);
/// with SA_RESTART any other call the kicked thread is in (a host running a vCPU itself) goes on.
export fn ferry_install_kick_handler(sig: c_int) isize {
    const act = linux.Sigaction{
        .handler = .{ .handler = kickHandler },
        .mask = linux.empty_sigset,
        .flags = linux.SA.RESTART,
    };
    return ret(linux.sigaction(@intCast(sig), &act, null));
}

export fn ferry_gettid() isize {
    return ret(linux.syscall0(.gettid));
}

export fn ferry_getpid() isize {
    return ret(linux.syscall0(.getpid));
}

export fn ferry_tgkill(tgid: c_int, tid: c_int, sig: c_int) isize {
    return ret(linux.syscall3(.tgkill, ufd(tgid), ufd(tid), ufd(sig)));
}

/// CLOCK_MONOTONIC in nanoseconds.
pub export fn ferry_now_ns() u64 {
    var ts: linux.timespec = undefined;
    _ = linux.clock_gettime(.MONOTONIC, &ts);
    return @as(u64, @intCast(ts.sec)) * 1_000_000_000 + @as(u64, @intCast(ts.nsec));
}

// ---- ABI table --------------------------------------------------------------------------------

/// Size or offset number `i` of the kernel structs ferry shares with KVM (see abi.zig), or -1.
export fn ferry_abi(i: c_uint) i64 {
    if (i >= abi.table.len) return -1;
    return abi.table[i].value;
}

/// Name of ABI entry `i` ("kvm_run.exit_reason"), or null past the end.
export fn ferry_abi_name(i: c_uint) ?[*:0]const u8 {
    if (i >= abi.table.len) return null;
    return abi.table[i].name;
}

test {
    _ = abi;
    _ = @import("vcpu_thread.zig");
    _ = @import("uring.zig");
    _ = @import("vectored.zig");
    _ = crc32c;
    _ = @import("scan.zig");
    _ = @import("uffd.zig");
    _ = @import("sha256.zig");
}
