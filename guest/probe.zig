//! The probe guest: a freestanding x86_64 program that exercises what live migration must preserve
//! (memory patterns, dirtying, register and SSE state, SMP) and reports on COM1. See PROTOCOL.md.
//!
//! This file is compiled WITHOUT SSE (build.zig removes the feature): most of it runs while the
//! vCPU is still emulated by the PVM, whose emulator cannot execute SSE. xmm8..xmm15 are touched
//! only by entry.S, so the compiler never disturbs the state the worker loop keeps there.
const std = @import("std");
const blk = @import("blk.zig");
const net = @import("net.zig");
const virtio = @import("virtio.zig");

pub const panic = std.debug.no_panic;

// ---------------------------------------------------------------- memory map and constants
const MAX_CPUS = 64; // entry.S: MAX_CPUS
const TRAMP: u64 = 0x8000; // entry.S: TRAMP; SIPI vector 0x08
const WORK_BASE: u64 = 16 << 20; // dirty/pattern area starts here
const FOUR_GIB: u64 = 4 << 30; // end of the identity map
const COM1: u16 = 0x3f8;
const MSR_APIC_BASE: u32 = 0x1b;
const MSR_PVM_VIF: u32 = 0x4b564d10;
const MSR_PVM_SIG: u32 = 0x4b564d11;
const PVM_SIG: u64 = 0x4d5650; // "PVM"
const MSR_PVM_TSC_KHZ: u32 = 0x4b564d13;

// ---------------------------------------------------------------- entry.S
extern fn rdmsr_safe(msr: u32, out: *u64) callconv(.C) u32;
extern fn wrmsr_safe(msr: u32, value: u64) callconv(.C) u32;
extern fn load_idt() callconv(.C) void;
extern fn drop_idt() callconv(.C) void;
extern fn triple_fault() callconv(.C) noreturn;
extern fn park() callconv(.C) noreturn;
extern fn bench_loop(deadline: u64) callconv(.C) u64;
extern fn zero_qwords(dst: u64, n: u64) callconv(.C) void;
extern fn xmm_save(dst: *[16]u64) callconv(.C) void;
extern fn xmm_load(src: *const [16]u64) callconv(.C) void;
extern fn worker_loop(ctx: *WorkerCtx) callconv(.C) noreturn;
extern var vif_pages: [MAX_CPUS][4096]u8;
extern var idt: [256][2]u64;
extern const exc_table: [32]u64;
extern const tramp_start: u8;
extern const tramp_end: u8;

// ---------------------------------------------------------------- port and CPU primitives
inline fn outb(port: u16, v: u8) void {
    asm volatile ("outb %[v], %[p]"
        :
        : [v] "{al}" (v),
          [p] "{dx}" (port),
    );
}
inline fn outw(port: u16, v: u16) void {
    asm volatile ("outw %[v], %[p]"
        :
        : [v] "{ax}" (v),
          [p] "{dx}" (port),
    );
}
inline fn inb(port: u16) u8 {
    return asm volatile ("inb %[p], %[v]"
        : [v] "={al}" (-> u8),
        : [p] "{dx}" (port),
    );
}
pub inline fn rdtsc() u64 {
    var lo: u32 = undefined;
    var hi: u32 = undefined;
    asm volatile ("rdtsc"
        : [lo] "={eax}" (lo),
          [hi] "={edx}" (hi),
    );
    return (@as(u64, hi) << 32) | lo;
}
const Cpuid = struct { a: u32, b: u32, c: u32, d: u32 };
fn cpuid(leaf: u32) Cpuid {
    var a: u32 = undefined;
    var b: u32 = undefined;
    var c: u32 = undefined;
    var d: u32 = undefined;
    asm volatile ("cpuid"
        : [a] "={eax}" (a),
          [b] "={ebx}" (b),
          [c] "={ecx}" (c),
          [d] "={edx}" (d),
        : [leaf] "{eax}" (leaf),
          [sub] "{ecx}" (@as(u32, 0)),
    );
    return .{ .a = a, .b = b, .c = c, .d = d };
}
inline fn pause() void {
    asm volatile ("pause");
}
pub fn cpuPause() void {
    pause();
}
fn rd(comptime T: type, addr: u64) T {
    return @as(*align(1) const volatile T, @ptrFromInt(addr)).*;
}
fn wr(comptime T: type, addr: u64, v: T) void {
    @as(*align(1) volatile T, @ptrFromInt(addr)).* = v;
}

// ---------------------------------------------------------------- configuration (cmdline)
const Mode = enum { idle, dirty, pattern, fill, bench, blk, net, exits };
const Exit = enum { none, poweroff, reset, triplefault, halt };

pub const Config = struct {
    mode: Mode = .idle,
    mib: u64 = 64,
    rate: u64 = 0,
    interval_ms: u64 = 200,
    rounds: u64 = 0,
    exit: Exit = .none,
    native: bool = true,
    tsc_khz: u64 = 0,
    cpus: u64 = 0,
    ap_wait_ms: u64 = 100,
    bench_ms: u64 = 500,
    serial_rep: bool = false,
    fill_qwords: u64 = 0, // mode=fill: qwords written per page (0 = 512 native, 8 emulated)
    // mode=blk / mode=net (see blk.zig, net.zig)
    blk_mib: u64 = 8,
    blk_req_kib: u64 = 64,
    blk_depth: u64 = 32,
    io_timeout_ms: u64 = 2000,
    net_burst: u64 = 1,
    // mode=exits
    exits: u64 = 1000,
    /// mode=exits: the CPU that makes the exits (the others run the idle worker loop).
    exits_cpu: u64 = 0,
    ip: [4]u8 = .{ 10, 0, 2, 15 },
};

pub var cfg: Config = .{};
var cmdline_buf: [1024]u8 = undefined;
var cmdline_len: usize = 0;

const MemRegion = struct { addr: u64, size: u64, kind: u32 };
var memmap: [128]MemRegion = undefined;
var memmap_len: usize = 0;

// ---------------------------------------------------------------- shared state
var serial_lock: u32 = 0;
var cpus_up: u32 = 1; // BSP counts itself; APs add 1 when ready
var go: u32 = 0;
var stop: u32 = 0;
var native_wanted: bool = false;
var sse_ok: bool = false; // false only on a PVM vCPU that is still emulated
var native_on: bool = false;
pub var tsc_khz: u64 = 0;
pub var interval_ticks: u64 = 0;
var ram_mib: u64 = 0;
var work_room: u64 = 0; // bytes of usable RAM from WORK_BASE on (0 = no memory map)

// ---------------------------------------------------------------- serial output
pub const Line = struct {
    buf: [200]u8 = undefined,
    len: usize = 0,

    pub fn s(self: *Line, str: []const u8) void {
        for (str) |c| {
            if (self.len == self.buf.len) return;
            self.buf[self.len] = c;
            self.len += 1;
        }
    }
    pub fn d(self: *Line, v: u64) void {
        var tmp: [20]u8 = undefined;
        var i: usize = tmp.len;
        var y = v;
        while (true) {
            i -= 1;
            tmp[i] = @intCast('0' + y % 10);
            y /= 10;
            if (y == 0) break;
        }
        self.s(tmp[i..]);
    }
    pub fn x(self: *Line, v: u64) void {
        const digits = "0123456789abcdef";
        var tmp: [16]u8 = undefined;
        var i: usize = tmp.len;
        var y = v;
        while (true) {
            i -= 1;
            tmp[i] = digits[@intCast(y & 15)];
            y >>= 4;
            if (y == 0) break;
        }
        self.s("0x");
        self.s(tmp[i..]);
    }
};

fn lock() void {
    while (@atomicRmw(u32, &serial_lock, .Xchg, 1, .acquire) != 0) {
        while (@atomicLoad(u32, &serial_lock, .monotonic) != 0) pause();
    }
}
fn unlock() void {
    @atomicStore(u32, &serial_lock, 0, .release);
}
fn writeRaw(bytes: []const u8) void {
    if (cfg.serial_rep) {
        // One `rep outsb`: KVM turns it into a single KVM_EXIT_IO with count = len (the VMM must
        // handle kvm_run.io.count > 1). Opt-in: serial=rep.
        asm volatile ("rep outsb"
            :
            : [src] "{rsi}" (bytes.ptr),
              [n] "{rcx}" (bytes.len),
              [p] "{dx}" (COM1),
            : "rsi", "rcx", "memory"
        );
        return;
    }
    for (bytes) |c| outb(COM1, c);
}
/// Prints one whole line under the serial lock. Returns false (and prints nothing) once the
/// guest is stopping, so `PROBE EXIT` stays the last line.
pub fn emit(l: *Line) bool {
    l.s("\n");
    lock();
    defer unlock();
    if (@atomicLoad(u32, &stop, .acquire) != 0) return false;
    writeRaw(l.buf[0..l.len]);
    return true;
}

export fn exception_report(vec: u64, err: u64, rip: u64) callconv(.C) noreturn {
    var l = Line{};
    l.s("PROBE EXCEPTION vec=");
    l.d(vec);
    l.s(" err=");
    l.x(err);
    l.s(" rip=");
    l.x(rip);
    l.s("\n");
    // Bounded wait for the lock: the fault may have happened while holding it.
    var tries: u32 = 0;
    while (@atomicRmw(u32, &serial_lock, .Xchg, 1, .acquire) != 0 and tries < 1_000_000) : (tries += 1) pause();
    writeRaw(l.buf[0..l.len]);
    unlock();
    park();
}

// ---------------------------------------------------------------- boot information
fn parseBootInfo(kind: u64, ptr: u64) void {
    var cmd: u64 = 0;
    if (ptr == 0) return;
    if (kind == 0) {
        // Linux boot_params (zero page)
        cmd = rd(u32, ptr + 0x228);
        const n: usize = @min(rd(u8, ptr + 0x1e8), 128);
        for (0..n) |i| {
            const e = ptr + 0x2d0 + i * 20;
            addRegion(rd(u64, e), rd(u64, e + 8), rd(u32, e + 16));
        }
    } else {
        // PVH hvm_start_info: cmdline_paddr @24, rsdp_paddr @32, (version >= 1) memmap_paddr @40,
        // memmap_entries @48; memmap entries are 24 bytes (addr, size, u32 type, u32 reserved).
        if (rd(u32, ptr) != 0x336ec578) return;
        cmd = rd(u64, ptr + 24);
        if (rd(u32, ptr + 4) >= 1) {
            const mm = rd(u64, ptr + 40);
            const n: usize = @min(rd(u32, ptr + 48), 128);
            if (mm != 0) for (0..n) |i| {
                const e = mm + i * 24;
                addRegion(rd(u64, e), rd(u64, e + 8), rd(u32, e + 16));
            };
        }
    }
    if (cmd != 0 and cmd < FOUR_GIB) {
        while (cmdline_len < cmdline_buf.len - 1) : (cmdline_len += 1) {
            const c = rd(u8, cmd + cmdline_len);
            if (c == 0) break;
            cmdline_buf[cmdline_len] = c;
        }
    }
}

fn addRegion(addr: u64, size: u64, kind: u32) void {
    if (memmap_len == memmap.len) return;
    memmap[memmap_len] = .{ .addr = addr, .size = size, .kind = kind };
    memmap_len += 1;
}

fn eql(a: []const u8, b: []const u8) bool {
    if (a.len != b.len) return false;
    for (a, b) |p, q| if (p != q) return false;
    return true;
}

fn parseNum(v: []const u8) ?u64 {
    if (v.len == 0) return null;
    var r: u64 = 0;
    if (v.len > 2 and v[0] == '0' and (v[1] == 'x' or v[1] == 'X')) {
        for (v[2..]) |c| {
            const dgt: u64 = switch (c) {
                '0'...'9' => c - '0',
                'a'...'f' => c - 'a' + 10,
                'A'...'F' => c - 'A' + 10,
                else => return null,
            };
            r = r *% 16 +% dgt;
        }
        return r;
    }
    for (v) |c| {
        if (c < '0' or c > '9') return null;
        r = r *% 10 +% (c - '0');
    }
    return r;
}

fn parseCmdline() void {
    const line = cmdline_buf[0..cmdline_len];
    var i: usize = 0;
    while (i < line.len) {
        while (i < line.len and line[i] == ' ') i += 1;
        const start = i;
        while (i < line.len and line[i] != ' ') i += 1;
        const tok = line[start..i];
        const eq = std.mem.indexOfScalar(u8, tok, '=') orelse continue;
        const k = tok[0..eq];
        const v = tok[eq + 1 ..];
        const n = parseNum(v);
        if (eql(k, "mode")) {
            if (eql(v, "idle")) cfg.mode = .idle;
            if (eql(v, "dirty")) cfg.mode = .dirty;
            if (eql(v, "pattern")) cfg.mode = .pattern;
            if (eql(v, "fill")) cfg.mode = .fill;
            if (eql(v, "bench")) cfg.mode = .bench;
            if (eql(v, "blk")) cfg.mode = .blk;
            if (eql(v, "net")) cfg.mode = .net;
            if (eql(v, "exits")) cfg.mode = .exits;
        } else if (eql(k, "ip")) {
            if (parseIp(v)) |a| cfg.ip = a;
        } else if (eql(k, "serial")) {
            cfg.serial_rep = eql(v, "rep");
        } else if (eql(k, "exit")) {
            if (eql(v, "poweroff")) cfg.exit = .poweroff;
            if (eql(v, "reset")) cfg.exit = .reset;
            if (eql(v, "triplefault")) cfg.exit = .triplefault;
            if (eql(v, "halt")) cfg.exit = .halt;
        } else if (n) |num| {
            if (eql(k, "mib")) cfg.mib = num;
            if (eql(k, "rate")) cfg.rate = num;
            if (eql(k, "interval_ms")) cfg.interval_ms = @max(num, 1);
            if (eql(k, "rounds")) cfg.rounds = num;
            if (eql(k, "native")) cfg.native = num != 0;
            if (eql(k, "tsc_khz")) cfg.tsc_khz = num;
            if (eql(k, "cpus")) cfg.cpus = num;
            if (eql(k, "ap_wait_ms")) cfg.ap_wait_ms = num;
            if (eql(k, "bench_ms")) cfg.bench_ms = @max(num, 1);
            if (eql(k, "fill_qwords")) cfg.fill_qwords = std.math.clamp(num, 1, 512);
            if (eql(k, "blk_mib")) cfg.blk_mib = num;
            if (eql(k, "blk_req_kib")) cfg.blk_req_kib = std.math.clamp(num, 1, 1024);
            if (eql(k, "blk_depth")) cfg.blk_depth = std.math.clamp(num, 1, 64);
            if (eql(k, "io_timeout_ms")) cfg.io_timeout_ms = @max(num, 1);
            if (eql(k, "exits")) cfg.exits = std.math.clamp(num, 1, 10_000_000);
            if (eql(k, "exits_cpu")) cfg.exits_cpu = num;
            if (eql(k, "net_burst")) cfg.net_burst = std.math.clamp(num, 1, 1_000_000);
        }
    }
    if (cfg.rounds != 0 and cfg.exit == .none) cfg.exit = .poweroff;
}

fn parseIp(v: []const u8) ?[4]u8 {
    var out: [4]u8 = undefined;
    var it = std.mem.splitScalar(u8, v, '.');
    var i: usize = 0;
    while (it.next()) |part| : (i += 1) {
        if (i == 4) return null;
        const n = parseNum(part) orelse return null;
        if (n > 255) return null;
        out[i] = @intCast(n);
    }
    return if (i == 4) out else null;
}

/// ram_mib = usable (type 1) RAM rounded up to MiB; mib is clamped so that the work area
/// [WORK_BASE, WORK_BASE + mib MiB) lies in one usable region below 4 GiB.
fn sizeMemory() void {
    if (memmap_len == 0) return; // no map given: trust mib as is
    var total: u64 = 0;
    var room: u64 = 0;
    for (memmap[0..memmap_len]) |r| {
        if (r.kind != 1) continue;
        total +%= r.size;
        const end = @min(r.addr +| r.size, FOUR_GIB);
        if (r.addr <= WORK_BASE and end > WORK_BASE) room = end - WORK_BASE;
    }
    work_room = room;
    ram_mib = (total + (1 << 20) - 1) >> 20;
    cfg.mib = @min(cfg.mib, room >> 20);
}

// ---------------------------------------------------------------- platform set-up
fn setupIdt() void {
    for (exc_table, 0..) |h, v| {
        const lo: u64 = (h & 0xffff) | (@as(u64, 0x08) << 16) | (@as(u64, 0x8e) << 40) | ((h >> 16 & 0xffff) << 48);
        idt[v][0] = lo;
        idt[v][1] = h >> 32;
    }
    load_idt();
}

fn calibrateTsc() u64 {
    const ms = 10;
    const latch: u16 = 1193182 / (1000 / ms);
    outb(0x61, (inb(0x61) & ~@as(u8, 0x02)) | 0x01); // gate high, speaker off
    outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0, binary
    outb(0x42, @truncate(latch));
    outb(0x42, @truncate(latch >> 8));
    const t0 = rdtsc();
    var polls: u64 = 0;
    while ((inb(0x61) & 0x20) == 0) {
        polls += 1;
        // Give up after ~100 ms at 2.5 GHz (the window is 10 ms): port 0x61 is not answering.
        if (polls > 100_000 or rdtsc() - t0 > 250_000_000) return 0;
    }
    const t1 = rdtsc();
    if (polls < 10) return 0; // the PIT did not count
    return (t1 - t0) / ms;
}

/// When the PIT does not answer (e.g. port 0x61 unhandled): the hypervisor timing leaf, then the
/// PVM's nominal TSC MSR, then a guess. Says which on a `PROBE WARN` line.
fn fallbackTscKhz(pvm: bool) u64 {
    var khz: u64 = 1_000_000;
    var source: []const u8 = "default";
    const h = cpuid(0x40000000);
    var v: u64 = 0;
    if (h.a >= 0x40000010 and cpuid(0x40000010).a != 0) {
        khz = cpuid(0x40000010).a;
        source = "cpuid_40000010";
    } else if (pvm and rdmsr_safe(MSR_PVM_TSC_KHZ, &v) == 0 and v != 0) {
        khz = v;
        source = "msr_4b564d13";
    }
    var l = Line{};
    l.s("PROBE WARN tsc_calibration=failed source=");
    l.s(source);
    _ = emit(&l);
    return khz;
}

fn isKvm() bool {
    const h = cpuid(0x40000000);
    // "KVMKVMKVM\0\0\0"
    return h.b == 0x4b4d564b and h.c == 0x564b4d56 and h.d == 0x4d;
}

fn isPvm() bool {
    if (!isKvm()) return false;
    var v: u64 = 0;
    return rdmsr_safe(MSR_PVM_SIG, &v) == 0 and v == PVM_SIG;
}

/// Switch this vCPU to native execution (PVM). Must run while emulated. Returns true on success.
fn goNative(cpu: usize) bool {
    const gpa = @intFromPtr(&vif_pages[cpu]);
    if (wrmsr_safe(MSR_PVM_VIF, gpa | 1) != 0) return false;
    drop_idt(); // native: any exception is fatal anyway
    return true;
}

var apic_base: u64 = 0xfee00000;

fn apicWrite(reg: u64, v: u32) void {
    wr(u32, apic_base + reg, v);
}

fn delayUs(us: u64) void {
    const end = rdtsc() + us * tsc_khz / 1000;
    while (rdtsc() < end) pause();
}

fn startAps() void {
    const len = @intFromPtr(&tramp_end) - @intFromPtr(&tramp_start);
    const src: [*]const u8 = @ptrCast(&tramp_start);
    for (0..len) |i| wr(u8, TRAMP + i, src[i]);
    apicWrite(0x310, 0);
    apicWrite(0x300, 0x000c4500); // INIT, level assert, all excluding self
    delayUs(1000);
    const vec: u32 = @intCast(TRAMP >> 12);
    apicWrite(0x300, 0x000c4600 | vec); // STARTUP
    delayUs(200);
    apicWrite(0x300, 0x000c4600 | vec);
}

fn waitForAps() void {
    if (cfg.cpus == 1) return;
    const end = rdtsc() + cfg.ap_wait_ms * tsc_khz;
    while (rdtsc() < end) {
        if (cfg.cpus != 0 and @atomicLoad(u32, &cpus_up, .acquire) >= cfg.cpus) return;
        pause();
    }
}

// ---------------------------------------------------------------- register/SSE state
/// Per-vCPU worker context; offsets are used by entry.S (CTX_*).
const WorkerCtx = extern struct {
    cpu: u64, // 0
    deadline: u64, // 8
    sse: u64, // 16
    init_gpr: [6]u64, // 24: rbx rbp r12 r13 r14 r15
    init_xmm: [16]u64, // 72: xmm8..xmm15 (lo, hi)
    gpr: [6]u64, // 200
    xmm: [16]u64, // 248
    ticks: u64, // 376
    failed: u64, // 384: bit per register already reported
    last_count: u64, // 392
    interval: u64, // 400: interval_ticks
    _pad: [104]u8, // to 512 bytes: one context per cache-line group
};
comptime {
    std.debug.assert(@offsetOf(WorkerCtx, "deadline") == 8);
    std.debug.assert(@offsetOf(WorkerCtx, "sse") == 16);
    std.debug.assert(@offsetOf(WorkerCtx, "init_gpr") == 24);
    std.debug.assert(@offsetOf(WorkerCtx, "init_xmm") == 72);
    std.debug.assert(@offsetOf(WorkerCtx, "gpr") == 200);
    std.debug.assert(@offsetOf(WorkerCtx, "xmm") == 248);
    std.debug.assert(@offsetOf(WorkerCtx, "interval") == 400);
    std.debug.assert(@sizeOf(WorkerCtx) == 512);
}
var ctxs: [MAX_CPUS]WorkerCtx align(64) = undefined;

const gpr_names = [_][]const u8{ "rbx", "rbp", "r12", "r13", "r14", "r15" };
const xmm_names = [_][]const u8{ "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15" };

pub fn mix(v: u64) u64 {
    var z = v +% 0x9e3779b97f4a7c15;
    z = (z ^ (z >> 30)) *% 0xbf58476d1ce4e5b9;
    z = (z ^ (z >> 27)) *% 0x94d049bb133111eb;
    return z ^ (z >> 31);
}

fn initCtx(cpu: usize) *WorkerCtx {
    const c = &ctxs[cpu];
    c.cpu = cpu;
    c.sse = @intFromBool(sse_ok);
    c.init_gpr = .{
        @intFromPtr(c),
        0xb0b0_0000_0000_0000 | (@as(u64, cpu) << 8) | 0x5a,
        0, // r12 = count
        0x1313_0000_0000_0000 + cpu,
        mix(cpu * 7 + 1),
        mix(cpu * 7 + 2),
    };
    for (0..16) |i| c.init_xmm[i] = mix(0x1000 + cpu * 16 + i);
    c.gpr = c.init_gpr;
    c.xmm = c.init_xmm;
    c.ticks = 0;
    c.failed = 0;
    c.last_count = 0;
    c.interval = interval_ticks;
    c.deadline = rdtsc() + interval_ticks;
    return c;
}

fn stateFail(c: *WorkerCtx, bit: u6, name: []const u8, want: u64, got: u64, count: u64) void {
    const mask = @as(u64, 1) << bit;
    if (c.failed & mask != 0) return;
    c.failed |= mask;
    var l = Line{};
    l.s("PROBE STATE FAIL reg=");
    l.s(name);
    l.s(" cpu=");
    l.d(c.cpu);
    l.s(" want=");
    l.x(want);
    l.s(" got=");
    l.x(got);
    l.s(" count=");
    l.d(count);
    _ = emit(&l);
}

/// Compare the dumped registers with what the loop must have produced after `count` iterations.
fn checkState(c: *WorkerCtx) void {
    const n = c.gpr[2];
    if (n <= c.last_count) stateFail(c, 2, "r12", c.last_count + 1, n, n);
    const want = [6]u64{
        c.init_gpr[0],
        c.init_gpr[1],
        n,
        c.init_gpr[3],
        c.init_gpr[4] +% 3 *% n,
        c.init_gpr[5] -% n,
    };
    for (0..6) |i| if (c.gpr[i] != want[i]) stateFail(c, @intCast(i), gpr_names[i], want[i], c.gpr[i], n);
    if (c.sse == 0) return;
    for (0..16) |i| {
        const step = c.init_xmm[14 + (i & 1)]; // xmm15 lane
        const w = switch (i / 2) {
            0 => c.init_xmm[i] +% n *% step,
            1 => c.init_xmm[i] -% n *% step,
            else => c.init_xmm[i],
        };
        if (c.xmm[i] != w) stateFail(c, @intCast(8 + i / 2), xmm_names[i / 2], w, c.xmm[i], n);
    }
}

/// Next progress deadline: one interval after the last, or after now if we fell behind or the TSC
/// jumped backwards (a deadline more than one interval ahead).
fn nextDeadline(deadline: u64, now: u64) u64 {
    const next = deadline +% interval_ticks;
    if (next <= now or next - now > interval_ticks) return now + interval_ticks;
    return next;
}

pub fn progress(cpu: u64, count: u64) bool {
    var l = Line{};
    l.s("PROBE PROGRESS cpu=");
    l.d(cpu);
    l.s(" count=");
    l.d(count);
    return emit(&l);
}

/// Called from worker_loop (entry.S) every interval: check state, print progress. Nonzero = stop.
export fn worker_tick(c: *WorkerCtx) callconv(.C) u32 {
    const now = rdtsc();
    checkState(c);
    const n = c.gpr[2];
    c.last_count = n;
    c.deadline = nextDeadline(c.deadline, now);
    if (!progress(c.cpu, n)) return 1;
    c.ticks += 1;
    if (c.cpu == 0 and cfg.rounds != 0 and c.ticks >= cfg.rounds) doExit();
    return 0;
}

// ---------------------------------------------------------------- exit
pub fn doExit() noreturn {
    var l = Line{};
    l.s("PROBE EXIT ");
    l.s(@tagName(cfg.exit));
    l.s("\n");
    lock();
    @atomicStore(u32, &stop, 1, .release);
    writeRaw(l.buf[0..l.len]);
    unlock();
    switch (cfg.exit) {
        .poweroff => {
            outw(0x604, 0x2000); // q35 ACPI PM1a_CNT: SLP_EN, S5 (ferry implements the same)
            outw(0xb004, 0x2000); // i440fx PM1a_CNT
            park();
        },
        .reset => {
            outb(0xcf9, 0x06);
            triple_fault();
        },
        .triplefault => triple_fault(),
        .halt, .none => park(),
    }
}

// ---------------------------------------------------------------- BSP memory workloads
pub const Bsp = struct {
    deadline: u64 = 0,
    last_count: u64 = 0,
    xmm_init: [16]u64 = undefined,
    xmm_now: [16]u64 = undefined,
    xmm_failed: u8 = 0,
    ticks: u64 = 0,

    pub fn init(self: *Bsp) void {
        self.deadline = rdtsc() + interval_ticks;
        if (sse_ok) {
            for (0..16) |i| self.xmm_init[i] = mix(0x2000 + i);
            xmm_load(&self.xmm_init);
        }
    }

    /// Returns true when a progress line was printed (the interval elapsed and count moved).
    pub fn tick(self: *Bsp, count: u64) bool {
        const now = rdtsc();
        if (now < self.deadline and self.deadline - now <= interval_ticks) return false;
        self.deadline = nextDeadline(self.deadline, now);
        if (count == self.last_count) return false;
        self.last_count = count;
        if (sse_ok) {
            xmm_save(&self.xmm_now);
            for (0..16) |i| {
                const bit = @as(u8, 1) << @intCast(i / 2);
                if (self.xmm_now[i] != self.xmm_init[i] and self.xmm_failed & bit == 0) {
                    self.xmm_failed |= bit;
                    var l = Line{};
                    l.s("PROBE STATE FAIL reg=");
                    l.s(xmm_names[i / 2]);
                    l.s(" cpu=0 want=");
                    l.x(self.xmm_init[i]);
                    l.s(" got=");
                    l.x(self.xmm_now[i]);
                    l.s(" count=");
                    l.d(count);
                    _ = emit(&l);
                }
            }
        }
        _ = progress(0, count);
        self.ticks += 1;
        return true;
    }
};

fn verifyOk(round: u64) void {
    var l = Line{};
    l.s("PROBE VERIFY ok round=");
    l.d(round);
    _ = emit(&l);
}

fn runPattern() noreturn {
    const npages = cfg.mib << 8;
    if (sse_ok) {
        zero_qwords(WORK_BASE, cfg.mib << 17);
    } else {
        // Emulated: rep stosq over the whole area would take seconds; the check reads one byte a page.
        for (0..npages) |p| wr(u8, WORK_BASE + p * 4096, 0);
    }
    var b = Bsp{};
    b.init();
    var round: u64 = 0;
    var failed_round: u64 = 0;
    while (true) {
        round += 1;
        for (0..npages) |p| {
            const a = WORK_BASE + p * 4096;
            wr(u8, a, rd(u8, a) +% 1);
        }
        const want: u8 = @truncate(round);
        for (0..npages) |p| {
            const got = rd(u8, WORK_BASE + p * 4096);
            if (got != want) {
                var l = Line{};
                l.s("PROBE VERIFY FAIL page=");
                l.d(p);
                l.s(" want=");
                l.d(want);
                l.s(" got=");
                l.d(got);
                l.s(" round=");
                l.d(round);
                _ = emit(&l);
                failed_round = round;
                // Resynchronise so one corruption is reported once, not every round after.
                wr(u8, WORK_BASE + p * 4096, want);
            }
        }
        const last = cfg.rounds != 0 and round >= cfg.rounds;
        if (b.tick(round) or last) {
            if (failed_round != round) verifyOk(round);
        }
        if (last) doExit();
    }
}

fn runDirty() noreturn {
    const npages = cfg.mib << 8;
    var b = Bsp{};
    b.init();
    var count: u64 = 0;
    var idx: u64 = 0;
    var pass: u64 = 1;
    const hz = tsc_khz * 1000;
    const burst: u64 = @max(cfg.rate / 50, 1); // at most 20 ms of backlog after a pause
    var credit: u64 = 0; // in pages * hz
    var last = rdtsc();
    while (true) {
        var chunk: u64 = 64;
        if (cfg.rate != 0) {
            const now = rdtsc();
            const dt = if (now > last) now - last else 0; // the TSC may jump back after a migration
            credit = @min(credit +| dt *| cfg.rate, burst *| hz);
            last = now;
            chunk = @min(chunk, credit / hz);
        }
        if (npages == 0) chunk = 0;
        var k: u64 = 0;
        while (k < chunk) : (k += 1) {
            wr(u64, WORK_BASE + idx * 4096, count);
            count += 1;
            idx += 1;
            if (idx == npages) {
                idx = 0;
                pass += 1;
            }
        }
        if (cfg.rate != 0) credit -= chunk * hz;
        _ = b.tick(count);
        if (cfg.rounds != 0 and pass > cfg.rounds) {
            _ = progress(0, count);
            doExit();
        }
        if (chunk == 0) pause();
    }
}

/// Port 0x80 (POST code) and PCIe ECAM at 0xB0000000: both are emulated in user space by ferry and
/// by QEMU (q35), so each access is one exit that the VMM handles outside the kernel.
const EXIT_PORT: u16 = 0x80;
const EXIT_MMIO: u64 = 0xB000_0000;

fn perExitNs(ticks: u64, n: u64) u64 {
    return @intCast(@as(u128, ticks) * 1_000_000 / (@as(u128, tsc_khz) * n));
}

/// mode=exits: `exits` port writes, then `exits` MMIO reads, timed with the TSC; one `EXITS` line per
/// round (`rounds`, at least 1), then the idle loop (or the exit when `rounds` was given).
fn runExits() noreturn {
    const n = cfg.exits;
    var round: u64 = 1;
    while (true) : (round += 1) {
        const t0 = rdtsc();
        var i: u64 = 0;
        while (i < n) : (i += 1) outb(EXIT_PORT, @truncate(i));
        const t1 = rdtsc();
        var sum: u32 = 0;
        i = 0;
        while (i < n) : (i += 1) sum +%= rd(u32, EXIT_MMIO);
        const t2 = rdtsc();
        var l = Line{};
        l.s("PROBE EXITS round=");
        l.d(round);
        l.s(" n=");
        l.d(n);
        l.s(" pio_ns=");
        l.d(perExitNs(t1 - t0, n));
        l.s(" mmio_ns=");
        l.d(perExitNs(t2 - t1, n));
        l.s(" sum=");
        l.x(sum);
        _ = emit(&l);
        if (round >= @max(cfg.rounds, 1)) break;
    }
    if (cfg.rounds != 0) doExit();
    idle();
}

// ---------------------------------------------------------------- mode=fill
/// The content of page `p` in generation `gen`: a xorshift64 stream seeded by the page index and
/// generation, one value per written qword (never zero, never the same for two pages).
const FillStream = struct {
    x: u64,
    fn init(p: u64, gen: u64) FillStream {
        const seed = mix(p ^ (gen << 40));
        return .{ .x = if (seed == 0) 0x9e3779b97f4a7c15 else seed };
    }
    fn next(self: *FillStream) u64 {
        var x = self.x;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.x = x;
        return x;
    }
};

var fill_stride: u64 = 8; // bytes between written qwords

fn fillPage(p: u64, gen: u64) void {
    var st = FillStream.init(p, gen);
    const base = WORK_BASE + p * 4096;
    var o: u64 = 0;
    while (o < 4096) : (o += fill_stride) wr(u64, base + o, st.next());
}

/// Index of the first written qword of page `p` that does not hold generation `gen`, or null.
fn checkPage(p: u64, gen: u64) ?u64 {
    var st = FillStream.init(p, gen);
    const base = WORK_BASE + p * 4096;
    var o: u64 = 0;
    while (o < 4096) : (o += fill_stride) {
        if (rd(u64, base + o) != st.next()) return o / 8;
    }
    return null;
}

/// Writes every page of the area once (generation 0), prints `FILLED`, then rewrites pages in order
/// at `rate` pages/s (0: never; each full pass is the next generation) while a verify cursor sweeps
/// the area checking every page against the generation it must hold.
fn runFill() noreturn {
    const npages = cfg.mib << 8;
    const qwords = if (cfg.fill_qwords != 0) cfg.fill_qwords else if (sse_ok) @as(u64, 512) else 8;
    fill_stride = 4096 / qwords;
    var b = Bsp{};
    b.init();
    for (0..npages) |p| fillPage(p, 0);
    var f = Line{};
    f.s("PROBE FILLED pages=");
    f.d(npages);
    f.s(" qwords=");
    f.d(4096 / fill_stride);
    _ = emit(&f);
    var count: u64 = npages; // pages written + pages verified
    var idx: u64 = 0; // next page to rewrite
    var gen: u64 = 1; // generation being written at idx
    var cursor: u64 = 0; // next page to verify
    var round: u64 = 0;
    var failed_round: u64 = 0;
    const hz = tsc_khz * 1000;
    const burst: u64 = @max(cfg.rate / 50, 1);
    var credit: u64 = 0;
    var last = rdtsc();
    while (true) {
        if (cfg.rate != 0 and npages != 0) {
            const now = rdtsc();
            const dt = if (now > last) now - last else 0;
            credit = @min(credit +| dt *| cfg.rate, burst *| hz);
            last = now;
            var chunk = @min(@as(u64, 64), credit / hz);
            credit -= chunk * hz;
            while (chunk > 0) : (chunk -= 1) {
                fillPage(idx, gen);
                count += 1;
                idx += 1;
                if (idx == npages) {
                    idx = 0;
                    gen += 1;
                }
            }
        }
        var k: u64 = 0;
        while (k < 16 and npages != 0) : (k += 1) {
            const want = if (cursor < idx) gen else gen - 1;
            if (checkPage(cursor, want)) |q| {
                var l = Line{};
                l.s("PROBE VERIFY FAIL page=");
                l.d(cursor);
                l.s(" want=");
                l.d(want);
                l.s(" got=qword");
                l.d(q);
                l.s(" round=");
                l.d(round + 1);
                _ = emit(&l);
                failed_round = round + 1;
                fillPage(cursor, want); // resynchronise: report one corruption once
            }
            cursor += 1;
            count += 1;
            if (cursor == npages) {
                cursor = 0;
                round += 1;
                if (cfg.rounds != 0 and round >= cfg.rounds) {
                    if (failed_round != round) verifyOk(round);
                    _ = progress(0, count);
                    doExit();
                }
            }
        }
        if (b.tick(count) and round > 0 and failed_round != round) verifyOk(round);
    }
}

/// The BSP's fallback when a driver gives up: the idle worker loop (progress, register checks, and
/// `rounds` progress lines then exit, as in mode=idle).
pub fn idle() noreturn {
    worker_loop(initCtx(0));
}

fn ips(iters: u64, ticks: u64) u64 {
    if (ticks == 0) return 0;
    return @intCast(@as(u128, iters) * tsc_khz * 1000 / ticks);
}

// ---------------------------------------------------------------- entry points (from entry.S)
export fn probe_main(kind: u64, ptr: u64) callconv(.C) noreturn {
    writeRaw("PROBE BOOT\n");
    parseBootInfo(kind, ptr);
    parseCmdline();
    sizeMemory();

    // Nothing may interrupt a native vCPU: mask the PICs and the BSP's LINT0/LINT1.
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    var apic_msr: u64 = 0;
    if (rdmsr_safe(MSR_APIC_BASE, &apic_msr) == 0 and apic_msr & 0xfffff000 != 0)
        apic_base = apic_msr & 0xfffff000;
    setupIdt();
    apicWrite(0xf0, 0x1ff); // software-enable the LAPIC, spurious vector 0xff
    apicWrite(0x350, 0x10000);
    apicWrite(0x360, 0x10000);

    const pvm = isPvm();
    tsc_khz = if (cfg.tsc_khz != 0) cfg.tsc_khz else calibrateTsc();
    if (tsc_khz == 0) tsc_khz = fallbackTscKhz(pvm);
    interval_ticks = cfg.interval_ms * tsc_khz;
    native_wanted = pvm and cfg.native;
    sse_ok = !pvm; // becomes true on a PVM once native

    if (cfg.cpus != 1) startAps();

    var bench_e: u64 = 0;
    var bench_n: u64 = 0;
    if (cfg.mode == .bench) {
        const t0 = rdtsc();
        const it0 = bench_loop(t0 + cfg.bench_ms * tsc_khz);
        bench_e = ips(it0, rdtsc() - t0);
    }
    if (native_wanted) native_on = goNative(0);
    if (native_on) sse_ok = true;
    if (cfg.mode == .bench) {
        const t1 = rdtsc();
        const it1 = bench_loop(t1 + cfg.bench_ms * tsc_khz);
        bench_n = ips(it1, rdtsc() - t1);
    }
    waitForAps();

    var l = Line{};
    l.s("PROBE READY cpus=");
    l.d(@atomicLoad(u32, &cpus_up, .acquire));
    l.s(" mode=");
    l.s(@tagName(cfg.mode));
    l.s(" mib=");
    l.d(cfg.mib);
    l.s(" native=");
    l.d(@intFromBool(native_on));
    l.s(" tsc_khz=");
    l.d(tsc_khz);
    l.s(" ram_mib=");
    l.d(ram_mib);
    _ = emit(&l);
    if (cfg.mode == .bench) {
        var m = Line{};
        m.s("PROBE BENCH emulated_ips=");
        m.d(bench_e);
        m.s(" native_ips=");
        m.d(bench_n);
        _ = emit(&m);
    }
    @atomicStore(u32, &go, 1, .release);

    switch (cfg.mode) {
        .idle, .bench => worker_loop(initCtx(0)),
        .pattern => runPattern(),
        .exits => if (cfg.exits_cpu == 0) runExits() else worker_loop(initCtx(0)),
        .dirty => runDirty(),
        .fill => runFill(),
        .blk, .net => {
            // Rings and buffers: the work area (16 MiB on), up to the end of its RAM region.
            virtio.dma_next = WORK_BASE;
            virtio.dma_end = if (work_room != 0) WORK_BASE + work_room else WORK_BASE + (64 << 20);
            if (cfg.mode == .blk) blk.run() else net.run();
        },
    }
}

export fn ap_main(cpu: u64) callconv(.C) noreturn {
    var native = false;
    if (native_wanted) native = goNative(cpu);
    const sse = native or (!native_wanted and sse_ok);
    _ = @atomicRmw(u32, &cpus_up, .Add, 1, .acq_rel);
    while (@atomicLoad(u32, &go, .acquire) == 0) pause();
    if (cfg.mode == .exits and cpu == cfg.exits_cpu) runExits();
    const c = initCtx(cpu);
    c.sse = @intFromBool(sse);
    worker_loop(c);
}
