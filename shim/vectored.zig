//! Vectored I/O primitives (virtio-net: one frame per call, straight between the tap and the
//! guest's descriptor buffers). `iov` is the caller's array of `struct iovec` (base, len: two u64
//! each). Same rules as shim.zig: return `>= 0` or `-errno`, no allocation, no globals, no policy.
const std = @import("std");
const linux = std.os.linux;

const ret = @import("sys.zig").ret;
const ufd = @import("sys.zig").ufd;

/// readv(2).
export fn ferry_readv(fd: c_int, iov: [*]const u8, iovcnt: c_int) isize {
    return ret(linux.syscall3(.readv, ufd(fd), @intFromPtr(iov), ufd(iovcnt)));
}

/// writev(2).
export fn ferry_writev(fd: c_int, iov: [*]const u8, iovcnt: c_int) isize {
    return ret(linux.syscall3(.writev, ufd(fd), @intFromPtr(iov), ufd(iovcnt)));
}

test "struct iovec is two u64, as the TypeScript callers lay it out" {
    try std.testing.expectEqual(@as(usize, 16), @sizeOf(std.posix.iovec));
}
