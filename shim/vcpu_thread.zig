//! vCPU run threads: a native thread per vCPU that only loops `ioctl(fd, req)` (KVM_RUN) and hands
//! each return to TypeScript, then sleeps until TypeScript hands the turn back. No isolate per vCPU,
//! no policy here: what an exit means, when a vCPU may run again, pause, kick and throttle all live
//! in src/machine/ (vcpu_host.ts). The caller owns every byte: the `RunBlock`, the doorbell word
//! and the thread's stack (pthread_attr_setstack), so nothing here allocates.
//!
//! Hand-over protocol on `RunBlock.turn` (futex words, process-private):
//! - TURN_THREAD (0): the thread may call the ioctl; it stores the result in `rc`, swaps the turn to
//!   TURN_HOST (compare-and-swap, so a QUIT is never lost), adds 1 to the doorbell and wakes its waiters.
//! - TURN_HOST (1): the exit is TypeScript's; the thread spins `spin` times (read at each wait), then futex-waits.
//!   Before each hand-over it stores the CPU it ran on in `cpu`.
//! - TURN_QUIT (2): the thread clears `tid`, rings once more and returns (then join it with
//!   `ferry_vcpu_thread_join`). The thread also rings once at start, after setting `tid`.
//! `ferry_vcpu_run_here` is one THREAD turn on the caller's own thread, for a host that runs a vCPU
//! itself (no run thread).
const std = @import("std");
const linux = std.os.linux;
const shim = @import("shim.zig"); // ferry_now_ns

pub const TURN_THREAD: i32 = 0;
pub const TURN_HOST: i32 = 1;
pub const TURN_QUIT: i32 = 2;

const FUTEX_WAIT: u32 = linux.FUTEX.WAIT | linux.FUTEX.PRIVATE_FLAG;
const FUTEX_WAKE: u32 = linux.FUTEX.WAKE | linux.FUTEX.PRIVATE_FLAG;

/// One vCPU's block, shared with TypeScript (offsets pinned below and in src/ffi/shim.ts).
pub const RunBlock = extern struct {
    turn: i32,
    /// The ioctl's result: >= 0, or -errno (EINTR after a kick).
    rc: i32,
    /// The thread's id, set before its first hand-over (for tgkill).
    tid: i32,
    fd: i32,
    /// The ioctl request number (KVM_RUN); argument 0.
    req: u64,
    /// Address of a u32 futex word, bumped after every hand-over (shared by all vCPUs of a VM).
    doorbell: u64,
    /// `pause` iterations to spin on `turn` before sleeping on it.
    spin: u32,
    /// The CPU the thread ran its last ioctl on, stored before each hand-over (a fact for the
    /// host's choice whether to spin while it waits; -1 until the first hand-over).
    cpu: i32,
    thread: u64,
};

inline fn atomicTurn(b: *RunBlock) i32 {
    return @atomicLoad(i32, &b.turn, .acquire);
}

fn ring(b: *RunBlock) void {
    const bell: *i32 = @ptrFromInt(b.doorbell);
    _ = @atomicRmw(i32, bell, .Add, 1, .acq_rel);
    _ = linux.futex_wake(bell, FUTEX_WAKE, std.math.maxInt(i32));
}

/// getcpu(2): the CPU the calling thread runs on now, or -1.
export fn ferry_getcpu() i32 {
    var cpu: usize = 0;
    if (linux.E.init(linux.getcpu(&cpu, null)) != .SUCCESS) return -1;
    return @intCast(cpu);
}

fn threadMain(arg: ?*anyopaque) callconv(.c) ?*anyopaque {
    const b: *RunBlock = @ptrCast(@alignCast(arg.?));
    @atomicStore(i32, &b.tid, @intCast(linux.gettid()), .release);
    ring(b); // started: TypeScript sees the tid; the turn stays whatever it was
    while (true) {
        var spins = @atomicLoad(u32, &b.spin, .monotonic); // TypeScript sets it per hand-over
        var t = atomicTurn(b);
        while (t == TURN_HOST) : (t = atomicTurn(b)) {
            if (spins > 0) {
                spins -= 1;
                std.atomic.spinLoopHint();
            } else _ = linux.futex_wait(&b.turn, FUTEX_WAIT, TURN_HOST, null);
        }
        if (t == TURN_QUIT) break;
        const r: isize = @bitCast(linux.syscall3(.ioctl, @as(usize, @bitCast(@as(isize, b.fd))), b.req, 0));
        @atomicStore(i32, &b.rc, @intCast(r), .release);
        @atomicStore(i32, &b.cpu, ferry_getcpu(), .release);
        // THREAD → HOST; a QUIT stored meanwhile stays (the owner is tearing down).
        if (@cmpxchgStrong(i32, &b.turn, TURN_THREAD, TURN_HOST, .acq_rel, .acquire) != null) break;
        ring(b);
    }
    @atomicStore(i32, &b.tid, 0, .release); // last touch of the block: the thread is leaving
    ring(b);
    return null;
}

/// Starts the run thread of `block` on the caller's stack `[stack, stack+len)`; it hands over once
/// at start (rc 0) with `tid` set. Returns 0 or -errno.
export fn ferry_vcpu_thread_start(block: *RunBlock, stack: u64, len: u64) isize {
    var attr: std.c.pthread_attr_t = undefined;
    var e = std.c.pthread_attr_init(&attr);
    if (e != .SUCCESS) return -@as(isize, @intFromEnum(e));
    defer _ = std.c.pthread_attr_destroy(&attr);
    e = std.c.pthread_attr_setstack(&attr, @ptrFromInt(stack), len);
    if (e != .SUCCESS) return -@as(isize, @intFromEnum(e));
    var th: std.c.pthread_t = undefined;
    e = std.c.pthread_create(&th, &attr, threadMain, block);
    if (e != .SUCCESS) return -@as(isize, @intFromEnum(e));
    block.thread = @intFromPtr(th);
    return 0;
}

/// One step of a run thread on the caller's own thread, for a host that runs a vCPU itself: when
/// the turn is TURN_THREAD, calls the ioctl, stores the result in `rc` and swaps the turn to
/// TURN_HOST (a QUIT stored meanwhile stays). No ring: the caller is the host. Returns the ioctl's
/// result, or -EAGAIN without calling it when the turn is not TURN_THREAD.
export fn ferry_vcpu_run_here(b: *RunBlock) isize {
    if (atomicTurn(b) != TURN_THREAD) return -@as(isize, @intFromEnum(linux.E.AGAIN));
    const r: isize = @bitCast(linux.syscall3(.ioctl, @as(usize, @bitCast(@as(isize, b.fd))), b.req, 0));
    @atomicStore(i32, &b.rc, @intCast(r), .release);
    _ = @cmpxchgStrong(i32, &b.turn, TURN_THREAD, TURN_HOST, .acq_rel, .acquire);
    return r;
}

/// Waits for a run thread that was given TURN_QUIT to return. Returns 0 or -errno.
export fn ferry_vcpu_thread_join(block: *RunBlock) isize {
    const e = std.c.pthread_join(@ptrFromInt(block.thread), null);
    if (e != .SUCCESS) return -@as(isize, @intFromEnum(e));
    return 0;
}

/// futex(FUTEX_WAIT_PRIVATE) on the u32 at `addr` while it holds `expected`, at most `timeout_ms`
/// (< 0: no limit). Returns 0 when woken, -EAGAIN when the word already differs, -ETIMEDOUT, -EINTR.
export fn ferry_futex_wait(addr: u64, expected: i32, timeout_ms: i32) isize {
    const p: *const i32 = @ptrFromInt(addr);
    if (timeout_ms < 0) return @bitCast(linux.futex_wait(p, FUTEX_WAIT, expected, null));
    const ts = linux.timespec{
        .sec = @divTrunc(timeout_ms, 1000),
        .nsec = @as(isize, @rem(timeout_ms, 1000)) * 1_000_000,
    };
    return @bitCast(linux.futex_wait(p, FUTEX_WAIT, expected, &ts));
}

/// `ferry_futex_wait` after spinning up to `spin_ns` on the word first (plain loads, no `pause`: a
/// long `pause` loop can make this host's own hypervisor deschedule the CPU). Returns 1 when the
/// word changed during the spin (no sleep), else `ferry_futex_wait`'s result.
export fn ferry_futex_wait_spin(addr: u64, expected: i32, spin_ns: u64, timeout_ms: i32) isize {
    if (spin_ns > 0) {
        const p: *const i32 = @ptrFromInt(addr);
        const end = shim.ferry_now_ns() + spin_ns;
        var k: u32 = 1;
        while (true) : (k +%= 1) {
            if (@atomicLoad(i32, p, .acquire) != expected) return 1;
            if (k % 64 == 0 and shim.ferry_now_ns() >= end) break;
        }
    }
    return ferry_futex_wait(addr, expected, timeout_ms);
}

/// futex(FUTEX_WAKE_PRIVATE): wakes up to `n` waiters on the u32 at `addr`; returns how many.
export fn ferry_futex_wake(addr: u64, n: i32) isize {
    return @bitCast(linux.futex_wake(@ptrFromInt(addr), FUTEX_WAKE, n));
}

test "RunBlock layout matches src/ffi/shim.ts" {
    try std.testing.expectEqual(@as(usize, 48), @sizeOf(RunBlock));
    try std.testing.expectEqual(@as(usize, 0), @offsetOf(RunBlock, "turn"));
    try std.testing.expectEqual(@as(usize, 4), @offsetOf(RunBlock, "rc"));
    try std.testing.expectEqual(@as(usize, 8), @offsetOf(RunBlock, "tid"));
    try std.testing.expectEqual(@as(usize, 12), @offsetOf(RunBlock, "fd"));
    try std.testing.expectEqual(@as(usize, 16), @offsetOf(RunBlock, "req"));
    try std.testing.expectEqual(@as(usize, 24), @offsetOf(RunBlock, "doorbell"));
    try std.testing.expectEqual(@as(usize, 32), @offsetOf(RunBlock, "spin"));
    try std.testing.expectEqual(@as(usize, 36), @offsetOf(RunBlock, "cpu"));
    try std.testing.expectEqual(@as(usize, 40), @offsetOf(RunBlock, "thread"));
}

test "ferry_vcpu_run_here calls the ioctl only on TURN_THREAD and hands the turn to the host" {
    var bell: i32 = 0;
    var b = std.mem.zeroes(RunBlock);
    b.fd = -1; // the ioctl fails with EBADF: enough to see that it was called
    b.req = 0xAE80; // KVM_RUN
    b.doorbell = @intFromPtr(&bell);
    b.turn = TURN_HOST;
    try std.testing.expectEqual(-@as(isize, @intFromEnum(linux.E.AGAIN)), ferry_vcpu_run_here(&b));
    try std.testing.expectEqual(TURN_HOST, b.turn);
    try std.testing.expectEqual(@as(i32, 0), b.rc);
    b.turn = TURN_THREAD;
    const badf = -@as(isize, @intFromEnum(linux.E.BADF));
    try std.testing.expectEqual(badf, ferry_vcpu_run_here(&b));
    try std.testing.expectEqual(TURN_HOST, b.turn);
    try std.testing.expectEqual(@as(i32, @intCast(badf)), b.rc);
    try std.testing.expectEqual(@as(i32, 0), bell); // no ring: the caller is the host
}

test "ferry_getcpu names a CPU of this machine" {
    const cpu = ferry_getcpu();
    try std.testing.expect(cpu >= 0);
    try std.testing.expect(cpu < 4096);
}

test "a run thread stores the CPU it ran on with each hand-over" {
    var bell: i32 = 0;
    var b = std.mem.zeroes(RunBlock);
    b.fd = -1; // the ioctl fails with EBADF at once
    b.req = 0xAE80; // KVM_RUN
    b.doorbell = @intFromPtr(&bell);
    b.cpu = -1;
    b.turn = TURN_THREAD;
    const stack = try std.heap.page_allocator.alignedAlloc(u8, 16, 256 * 1024);
    defer std.heap.page_allocator.free(stack);
    try std.testing.expectEqual(@as(isize, 0), ferry_vcpu_thread_start(&b, @intFromPtr(stack.ptr), stack.len));
    while (@atomicLoad(i32, &b.turn, .acquire) != TURN_HOST) std.atomic.spinLoopHint();
    try std.testing.expectEqual(-@as(i32, @intFromEnum(linux.E.BADF)), @atomicLoad(i32, &b.rc, .acquire));
    const cpu = @atomicLoad(i32, &b.cpu, .acquire);
    try std.testing.expect(cpu >= 0 and cpu < 4096);
    @atomicStore(i32, &b.turn, TURN_QUIT, .release);
    _ = linux.futex_wake(&b.turn, FUTEX_WAKE, 1);
    try std.testing.expectEqual(@as(isize, 0), ferry_vcpu_thread_join(&b));
    try std.testing.expectEqual(@as(i32, 0), b.tid);
}

test "ferry_futex_wait_spin returns 1 when the word changes during the spin, else waits" {
    var word: i32 = 5;
    const Bump = struct {
        fn run(w: *i32) void {
            std.Thread.sleep(2 * std.time.ns_per_ms);
            @atomicStore(i32, w, 6, .release);
        }
    };
    const t = try std.Thread.spawn(.{}, Bump.run, .{&word});
    // A spin of up to 2 s sees the store without sleeping.
    try std.testing.expectEqual(@as(isize, 1), ferry_futex_wait_spin(@intFromPtr(&word), 5, 2 * std.time.ns_per_s, 5000));
    t.join();
    // No spin and a word that already differs: the futex answers at once (EAGAIN).
    try std.testing.expectEqual(-@as(isize, @intFromEnum(linux.E.AGAIN)), ferry_futex_wait_spin(@intFromPtr(&word), 5, 0, 5000));
    // A spin that runs out falls back to the futex wait (here its 1 ms timeout).
    try std.testing.expectEqual(-@as(isize, @intFromEnum(linux.E.TIMEDOUT)), ferry_futex_wait_spin(@intFromPtr(&word), 6, 100_000, 1));
}
