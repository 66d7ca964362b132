//! io_uring primitives (virtio-blk's data path): the two raw syscalls. The rings themselves are
//! mapped with ferry_mmap (offsets IORING_OFF_SQ_RING / _CQ_RING / _SQES) and driven from
//! TypeScript (src/devices/virtio/block/uring.ts): SQE filling and CQE reaping live there.
//! Same rules as shim.zig: return `>= 0` or `-errno`, no allocation, no globals, no policy.
const std = @import("std");
const linux = std.os.linux;

const ret = @import("sys.zig").ret;

/// io_uring_setup(2): `params` is the caller's `struct io_uring_params` (120 bytes), filled in by
/// the kernel with the ring offsets. Returns the ring fd.
export fn ferry_uring_setup(entries: u32, params: *anyopaque) isize {
    return ret(linux.syscall2(.io_uring_setup, entries, @intFromPtr(params)));
}

/// io_uring_enter(2) without a signal mask: submits `to_submit` SQEs, and with
/// IORING_ENTER_GETEVENTS (1) in `flags` waits for `min_complete` CQEs. Returns SQEs consumed.
export fn ferry_uring_enter(fd: c_int, to_submit: u32, min_complete: u32, flags: u32) isize {
    const ufd: usize = @bitCast(@as(isize, fd));
    return ret(linux.syscall6(.io_uring_enter, ufd, to_submit, min_complete, flags, 0, 0));
}

test "io_uring_params is 120 bytes and the SQE 64, as the ring code in TypeScript assumes" {
    try std.testing.expectEqual(@as(usize, 120), @sizeOf(linux.io_uring_params));
    try std.testing.expectEqual(@as(usize, 64), @sizeOf(linux.io_uring_sqe));
    try std.testing.expectEqual(@as(usize, 16), @sizeOf(linux.io_uring_cqe));
}
