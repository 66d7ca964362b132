//! Sending memory by reference (migration: a paused guest's pages into its socket). vmsplice(2)
//! puts the pages into a pipe as references, splice(2) moves them on into a socket, and the peer's
//! read copies them straight out of this process's memory: the kernel neither copies them nor
//! allocates socket buffer pages for them. The caller must leave the pages unchanged until the peer
//! has read them. Same rules as shim.zig: `>= 0` or `-errno`, no allocation, no globals, no policy.
const std = @import("std");
const linux = std.os.linux;

const ret = @import("sys.zig").ret;
const ufd = @import("sys.zig").ufd;

const F_SETPIPE_SZ = 1031;
const F_GETPIPE_SZ = 1032;
const SPLICE_F_MOVE = 1;
const SPLICE_F_NONBLOCK = 2;

/// pipe2(2) with O_CLOEXEC into `fds` (read end, write end), then asks for a capacity of `size`
/// bytes (F_SETPIPE_SZ; capped by /proc/sys/fs/pipe-max-size). Returns the capacity it got.
export fn ferry_pipe(fds: *[2]i32, size: u32) isize {
    const r = ret(linux.pipe2(fds, .{ .CLOEXEC = true }));
    if (r < 0) return r;
    const got = ret(linux.fcntl(fds[0], F_SETPIPE_SZ, size));
    if (got > 0) return got;
    return ret(linux.fcntl(fds[0], F_GETPIPE_SZ, 0));
}

/// Moves the `len` bytes at `addr` into socket `sock` by reference, through the pipe
/// (`pipe_r`, `pipe_w`, of `capacity` bytes), whose first `queued` bytes are still to go from an
/// earlier call. Fills the pipe with vmsplice(2) only when it is empty, and drains it into the
/// socket with splice(2); when the socket (non-blocking) is full, it waits up to `timeout_ms` for
/// room and returns if none came. `progress` gets [bytes of `addr` taken into the pipe, bytes
/// still queued in it]. Returns 1 when all of it is in the socket, 0 when it returned after the
/// wait, or -errno (what is queued then is lost with the pipe).
export fn ferry_splice_out(
    sock: c_int,
    pipe_r: c_int,
    pipe_w: c_int,
    capacity: u64,
    addr: u64,
    len: u64,
    queued_in: u64,
    timeout_ms: c_int,
    progress: *[2]u64,
) isize {
    var taken: u64 = 0;
    var queued = queued_in;
    defer progress.* = .{ taken, queued };
    while (true) {
        if (queued == 0) {
            if (taken == len) return 1;
            const iov = [1]std.posix.iovec_const{.{ .base = @ptrFromInt(addr + taken), .len = @min(len - taken, capacity) }};
            const n = ret(linux.syscall4(.vmsplice, ufd(pipe_w), @intFromPtr(&iov), 1, SPLICE_F_NONBLOCK));
            if (n == -@as(isize, @intFromEnum(linux.E.INTR))) continue;
            if (n <= 0) return if (n == 0) -@as(isize, @intFromEnum(linux.E.IO)) else n;
            taken += @intCast(n);
            queued = @intCast(n);
        }
        const m = ret(linux.syscall6(.splice, ufd(pipe_r), 0, ufd(sock), 0, queued, SPLICE_F_MOVE | SPLICE_F_NONBLOCK));
        if (m > 0) {
            queued -= @intCast(m);
            continue;
        }
        if (m == -@as(isize, @intFromEnum(linux.E.INTR))) continue;
        if (m == -@as(isize, @intFromEnum(linux.E.AGAIN))) {
            var p = [1]linux.pollfd{.{ .fd = sock, .events = linux.POLL.OUT, .revents = 0 }};
            const w = ret(linux.syscall3(.poll, @intFromPtr(&p), 1, ufd(timeout_ms)));
            if (w == 0) return 0;
            if (w < 0 and w != -@as(isize, @intFromEnum(linux.E.INTR))) return w;
            continue;
        }
        // splice(2) returns 0 only with nothing in the pipe, which `queued` says there is.
        return if (m == 0) -@as(isize, @intFromEnum(linux.E.IO)) else m;
    }
}

test "a pipe gets the capacity asked for, and pages go through it into a socket" {
    var fds: [2]i32 = undefined;
    const cap = ferry_pipe(&fds, 1 << 16);
    try std.testing.expect(cap >= 1 << 16);
    defer _ = linux.close(fds[0]);
    defer _ = linux.close(fds[1]);
    var sv: [2]i32 = undefined;
    try std.testing.expectEqual(@as(usize, 0), linux.socketpair(linux.AF.UNIX, linux.SOCK.STREAM | linux.SOCK.NONBLOCK, 0, &sv));
    defer _ = linux.close(sv[0]);
    defer _ = linux.close(sv[1]);
    var src: [3 * 4096]u8 align(4096) = undefined;
    for (&src, 0..) |*b, i| b.* = @truncate(i *% 7);
    var progress: [2]u64 = undefined;
    const r = ferry_splice_out(sv[0], fds[0], fds[1], @intCast(cap), @intFromPtr(&src), src.len, 0, 100, &progress);
    try std.testing.expectEqual(@as(isize, 1), r);
    try std.testing.expectEqual([2]u64{ src.len, 0 }, progress);
    var got: [3 * 4096]u8 = undefined;
    try std.testing.expectEqual(@as(usize, got.len), linux.read(sv[1], &got, got.len));
    try std.testing.expectEqualSlices(u8, &src, &got);
}
