//! userfaultfd(2) primitives (post-copy migration: the destination serves guest page faults).
//! Thin wrappers: each builds the kernel struct from scalar arguments, issues one syscall or
//! ioctl and returns `>= 0` or `-errno`. Which pages to register, copy or zero, and when, is
//! decided in TypeScript (src/memory/userfault.ts, src/migration/postcopy*.ts).
const std = @import("std");
const linux = std.os.linux;
const c = @cImport({
    @cInclude("linux/userfaultfd.h");
    @cInclude("poll.h");
});

const ret = @import("sys.zig").ret;
const ufd = @import("sys.zig").ufd;

// linux/userfaultfd.h's ioctl numbers (its _IOWR/_IOR macros do not translate): type 0xAA.
const UFFDIO = 0xAA;
const UFFDIO_API = linux.IOCTL.IOWR(UFFDIO, 0x3F, c.struct_uffdio_api);
const UFFDIO_REGISTER = linux.IOCTL.IOWR(UFFDIO, 0x00, c.struct_uffdio_register);
const UFFDIO_UNREGISTER = linux.IOCTL.IOR(UFFDIO, 0x01, c.struct_uffdio_range);
const UFFDIO_WAKE = linux.IOCTL.IOR(UFFDIO, 0x02, c.struct_uffdio_range);
const UFFDIO_COPY = linux.IOCTL.IOWR(UFFDIO, 0x03, c.struct_uffdio_copy);
const UFFDIO_ZEROPAGE = linux.IOCTL.IOWR(UFFDIO, 0x04, c.struct_uffdio_zeropage);

/// _IO(0xAA, 0) on /dev/userfaultfd (linux/userfaultfd.h: USERFAULTFD_IOC_NEW).
const USERFAULTFD_IOC_NEW: u32 = 0xaa00;

/// A new userfaultfd: the userfaultfd(2) syscall, and when that is refused (EPERM with
/// vm.unprivileged_userfaultfd=0 for a process without CAP_SYS_PTRACE, or ENOSYS), the
/// /dev/userfaultfd device (Linux ≥ 6.1). `flags`: O_CLOEXEC | O_NONBLOCK. Returns the fd.
export fn ferry_uffd_open(flags: c_int) isize {
    const f: u32 = @bitCast(flags);
    const r = ret(linux.syscall1(.userfaultfd, f));
    if (r >= 0) return r;
    const dev = ret(linux.syscall4(.openat, ufd(linux.AT.FDCWD), @intFromPtr("/dev/userfaultfd"), @as(u32, 0o2000002), 0));
    if (dev < 0) return r;
    const n = ret(linux.syscall3(.ioctl, @bitCast(dev), USERFAULTFD_IOC_NEW, f));
    _ = linux.syscall1(.close, @bitCast(dev));
    return n;
}

/// UFFDIO_API handshake asking for `features`; writes the kernel's answer to `out`:
/// out[0] = features, out[1] = ioctls (bit n = ioctl number n is supported).
export fn ferry_uffd_api(fd: c_int, features: u64, out: *[2]u64) isize {
    var api = c.struct_uffdio_api{ .api = c.UFFD_API, .features = features, .ioctls = 0 };
    const r = ret(linux.syscall3(.ioctl, ufd(fd), UFFDIO_API, @intFromPtr(&api)));
    out[0] = api.features;
    out[1] = api.ioctls;
    return r;
}

/// UFFDIO_REGISTER of `[start, start+len)` with `mode` (1 = MISSING); writes the range's
/// supported ioctls to `out_ioctls`.
export fn ferry_uffd_register(fd: c_int, start: u64, len: u64, mode: u64, out_ioctls: *u64) isize {
    var reg = c.struct_uffdio_register{ .range = .{ .start = start, .len = len }, .mode = mode, .ioctls = 0 };
    const r = ret(linux.syscall3(.ioctl, ufd(fd), UFFDIO_REGISTER, @intFromPtr(&reg)));
    out_ioctls.* = reg.ioctls;
    return r;
}

/// UFFDIO_UNREGISTER of `[start, start+len)`.
export fn ferry_uffd_unregister(fd: c_int, start: u64, len: u64) isize {
    var range = c.struct_uffdio_range{ .start = start, .len = len };
    return ret(linux.syscall3(.ioctl, ufd(fd), UFFDIO_UNREGISTER, @intFromPtr(&range)));
}

/// UFFDIO_COPY of `len` bytes from `src` into the registered `dst` (mode 1 = DONTWAKE).
/// Returns the bytes copied; -EEXIST when the page is already present.
export fn ferry_uffd_copy(fd: c_int, dst: u64, src: u64, len: u64, mode: u64) isize {
    var cp = c.struct_uffdio_copy{ .dst = dst, .src = src, .len = len, .mode = mode, .copy = 0 };
    const r = ret(linux.syscall3(.ioctl, ufd(fd), UFFDIO_COPY, @intFromPtr(&cp)));
    if (r < 0) return r;
    return @intCast(cp.copy);
}

/// Places `len` bytes (whole 4 KiB pages) from `src` at `dst`, inside a range registered with
/// `fd` in MISSING mode: UFFDIO_COPY backs each missing page and fills it in one step (no zeroing
/// and no page fault), and a page that is already present is copied over in place instead. Returns
/// how many pages were present, or -errno. (A migration destination lands fresh pages this way.)
export fn ferry_uffd_place(fd: c_int, dst: u64, src: u64, len: u64) isize {
    const page: u64 = 4096;
    var off: u64 = 0;
    var present: isize = 0;
    var retries: u32 = 0;
    while (off < len) {
        var cp = c.struct_uffdio_copy{ .dst = dst + off, .src = src + off, .len = len - off, .mode = 0, .copy = 0 };
        const r = ret(linux.syscall3(.ioctl, ufd(fd), UFFDIO_COPY, @intFromPtr(&cp)));
        if (r == 0) break;
        if (cp.copy > 0) {
            // A partial copy (-EAGAIN): it stopped at a page it could not place; go on from there.
            off += @intCast(cp.copy);
            continue;
        }
        if (r == -@as(isize, @intFromEnum(linux.E.EXIST))) {
            const d: [*]u8 = @ptrFromInt(dst + off);
            const s: [*]const u8 = @ptrFromInt(src + off);
            @memcpy(d[0..page], s[0..page]);
            off += page;
            present += 1;
            continue;
        }
        // -EAGAIN with nothing copied: the mm was changing (a fork, mremap); try again a few times.
        if (r == -@as(isize, @intFromEnum(linux.E.AGAIN)) and retries < 1000) {
            retries += 1;
            continue;
        }
        return r;
    }
    return present;
}

/// UFFDIO_ZEROPAGE of `[start, start+len)` (mode 1 = DONTWAKE). Returns the bytes zeroed.
export fn ferry_uffd_zeropage(fd: c_int, start: u64, len: u64, mode: u64) isize {
    var z = c.struct_uffdio_zeropage{ .range = .{ .start = start, .len = len }, .mode = mode, .zeropage = 0 };
    const r = ret(linux.syscall3(.ioctl, ufd(fd), UFFDIO_ZEROPAGE, @intFromPtr(&z)));
    if (r < 0) return r;
    return @intCast(z.zeropage);
}

/// UFFDIO_WAKE of the threads waiting on `[start, start+len)`.
export fn ferry_uffd_wake(fd: c_int, start: u64, len: u64) isize {
    var range = c.struct_uffdio_range{ .start = start, .len = len };
    return ret(linux.syscall3(.ioctl, ufd(fd), UFFDIO_WAKE, @intFromPtr(&range)));
}

/// Reads up to `max` `struct uffd_msg` (32 bytes each, raw) into `buf`; returns how many.
/// -EAGAIN when none is pending on a nonblocking fd.
export fn ferry_uffd_read(fd: c_int, buf: [*]u8, max: u32) isize {
    const r = ret(linux.syscall3(.read, ufd(fd), @intFromPtr(buf), @as(usize, max) * @sizeOf(c.struct_uffd_msg)));
    if (r < 0) return r;
    return @divTrunc(r, @sizeOf(c.struct_uffd_msg));
}

/// poll(2) one fd for POLLIN for at most `timeout_ms` (-1: forever). Returns 1 when readable
/// (or hung up), 0 on timeout.
export fn ferry_poll_in(fd: c_int, timeout_ms: c_int) isize {
    var p = [1]linux.pollfd{.{ .fd = fd, .events = linux.POLL.IN, .revents = 0 }};
    return ret(linux.syscall3(.poll, @intFromPtr(&p), 1, ufd(timeout_ms)));
}

/// ABI entries of the userfaultfd structs (appended to abi.zig's table by shim.zig).
pub const abi_entries = [_]@import("abi.zig").Entry{
    .{ .name = "uffd_msg", .value = @sizeOf(c.struct_uffd_msg) },
    .{ .name = "uffd_msg.event", .value = @offsetOf(c.struct_uffd_msg, "event") },
    .{ .name = "uffd_msg.pagefault.flags", .value = @offsetOf(c.struct_uffd_msg, "arg") },
    .{ .name = "uffd_msg.pagefault.address", .value = @offsetOf(c.struct_uffd_msg, "arg") + 8 },
    .{ .name = "uffd_msg.pagefault.feat.ptid", .value = @offsetOf(c.struct_uffd_msg, "arg") + 16 },
    .{ .name = "uffdio_api", .value = @sizeOf(c.struct_uffdio_api) },
    .{ .name = "uffdio_range", .value = @sizeOf(c.struct_uffdio_range) },
    .{ .name = "uffdio_register", .value = @sizeOf(c.struct_uffdio_register) },
    .{ .name = "uffdio_copy", .value = @sizeOf(c.struct_uffdio_copy) },
    .{ .name = "uffdio_copy.copy", .value = @offsetOf(c.struct_uffdio_copy, "copy") },
    .{ .name = "uffdio_zeropage", .value = @sizeOf(c.struct_uffdio_zeropage) },
    .{ .name = "UFFDIO_API", .value = UFFDIO_API },
    .{ .name = "UFFDIO_REGISTER", .value = UFFDIO_REGISTER },
    .{ .name = "UFFDIO_COPY", .value = UFFDIO_COPY },
    .{ .name = "UFFDIO_ZEROPAGE", .value = UFFDIO_ZEROPAGE },
    .{ .name = "UFFDIO_WAKE", .value = UFFDIO_WAKE },
};

test "userfaultfd structs have the sizes and offsets of linux/userfaultfd.h" {
    try std.testing.expectEqual(@as(usize, 32), @sizeOf(c.struct_uffd_msg));
    try std.testing.expectEqual(@as(usize, 8), @offsetOf(c.struct_uffd_msg, "arg"));
    try std.testing.expectEqual(@as(usize, 24), @sizeOf(c.struct_uffdio_api));
    try std.testing.expectEqual(@as(usize, 32), @sizeOf(c.struct_uffdio_register));
    try std.testing.expectEqual(@as(usize, 40), @sizeOf(c.struct_uffdio_copy));
    try std.testing.expectEqual(@as(usize, 32), @sizeOf(c.struct_uffdio_zeropage));
    try std.testing.expectEqual(@as(u32, USERFAULTFD_IOC_NEW), 0xaa00);
    // The numbers gcc computes from the header's own macros.
    try std.testing.expectEqual(@as(u32, 0xc018aa3f), UFFDIO_API);
    try std.testing.expectEqual(@as(u32, 0xc020aa00), UFFDIO_REGISTER);
    try std.testing.expectEqual(@as(u32, 0x8010aa01), UFFDIO_UNREGISTER);
    try std.testing.expectEqual(@as(u32, 0x8010aa02), UFFDIO_WAKE);
    try std.testing.expectEqual(@as(u32, 0xc028aa03), UFFDIO_COPY);
    try std.testing.expectEqual(@as(u32, 0xc020aa04), UFFDIO_ZEROPAGE);
    try std.testing.expectEqual(c.UFFD_EVENT_PAGEFAULT, 0x12);
}

test "ferry_uffd_place fills missing pages through UFFDIO_COPY and copies over present ones" {
    const fd = ferry_uffd_open(0o2000000);
    if (fd < 0) return error.SkipZigTest; // no userfaultfd here
    defer _ = linux.syscall1(.close, @bitCast(fd));
    var out: [2]u64 = undefined;
    try std.testing.expect(ferry_uffd_api(@intCast(fd), 0, &out) >= 0);
    const len = 4 * 4096;
    const mem = try std.posix.mmap(null, len, std.posix.PROT.READ | std.posix.PROT.WRITE, .{ .TYPE = .PRIVATE, .ANONYMOUS = true }, -1, 0);
    defer std.posix.munmap(mem);
    mem[4096] = 7; // page 1 present before the range is registered
    var ioctls: u64 = 0;
    try std.testing.expect(ferry_uffd_register(@intCast(fd), @intFromPtr(mem.ptr), len, 1, &ioctls) >= 0);
    var src: [len]u8 align(4096) = undefined;
    for (&src, 0..) |*b, i| b.* = @truncate(i / 4096 + 1);
    try std.testing.expectEqual(@as(isize, 1), ferry_uffd_place(@intCast(fd), @intFromPtr(mem.ptr), @intFromPtr(&src), len));
    try std.testing.expectEqualSlices(u8, &src, mem[0..len]);
    // All present now: every page is copied in place.
    try std.testing.expectEqual(@as(isize, 4), ferry_uffd_place(@intCast(fd), @intFromPtr(mem.ptr), @intFromPtr(&src), len));
}
