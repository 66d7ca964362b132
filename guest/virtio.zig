//! Modern (virtio 1.x) virtio-pci transport and split virtqueues, polled: the probe never takes an
//! interrupt (MSI-X stays disabled, INTx is disabled in the command register, every avail ring says
//! VIRTQ_AVAIL_F_NO_INTERRUPT). Set-up touches config space and the BARs once; the data path is
//! descriptors + avail ring in RAM, one notify write per batch (skipped when the device set
//! VIRTQ_USED_F_NO_NOTIFY), and polling `used.idx` in RAM.
const std = @import("std");
const pci = @import("pci.zig");
const probe = @import("probe.zig");

pub const F_VERSION_1: u64 = 1 << 32;

// virtio_pci_cap cfg_type
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;

// virtio_pci_common_cfg offsets
const C_DFSELECT = 0x00;
const C_DF = 0x04;
const C_GFSELECT = 0x08;
const C_GF = 0x0c;
const C_NUM_QUEUES = 0x12;
const C_STATUS = 0x14;
const C_CFGGEN = 0x15;
const C_Q_SELECT = 0x16;
const C_Q_SIZE = 0x18;
const C_Q_ENABLE = 0x1c;
const C_Q_NOFF = 0x1e;
const C_Q_DESCLO = 0x20;
const C_Q_DESCHI = 0x24;
const C_Q_AVAILLO = 0x28;
const C_Q_AVAILHI = 0x2c;
const C_Q_USEDLO = 0x30;
const C_Q_USEDHI = 0x34;

// device_status bits
pub const S_ACKNOWLEDGE: u8 = 1;
pub const S_DRIVER: u8 = 2;
pub const S_DRIVER_OK: u8 = 4;
pub const S_FEATURES_OK: u8 = 8;
pub const S_NEEDS_RESET: u8 = 0x40;
pub const S_FAILED: u8 = 0x80;

// descriptor flags
pub const D_NEXT: u16 = 1;
pub const D_WRITE: u16 = 2;

extern fn zero_qwords(dst: u64, n: u64) callconv(.C) void;

pub fn rd(comptime T: type, addr: u64) T {
    return @as(*align(1) const volatile T, @ptrFromInt(addr)).*;
}
pub fn wr(comptime T: type, addr: u64, v: T) void {
    @as(*align(1) volatile T, @ptrFromInt(addr)).* = v;
}
/// Keeps the compiler from moving plain loads/stores (buffer contents) across ring accesses;
/// x86 is TSO, so no fence is needed for that.
pub inline fn barrier() void {
    asm volatile ("" ::: "memory");
}
inline fn mfence() void {
    asm volatile ("mfence" ::: "memory");
}

// ---------------------------------------------------------------- DMA memory (bump allocator)
/// Rings and buffers live in the work area (probe.zig sets the range from the memory map).
pub var dma_next: u64 = 0;
pub var dma_end: u64 = 0;

/// Zeroes `bytes` (a multiple of 8) at `addr` with `rep stosq`.
pub fn zero(addr: u64, bytes: u64) void {
    zero_qwords(addr, bytes / 8);
}

/// Zeroed, `alignment`-aligned guest memory, or null when the work area is exhausted.
pub fn alloc(bytes: u64, alignment: u64) ?u64 {
    const base = std.mem.alignForward(u64, dma_next, alignment);
    const size = std.mem.alignForward(u64, bytes, 8);
    if (base + size > dma_end) return null;
    zero_qwords(base, size / 8);
    dma_next = base + size;
    return base;
}

// ---------------------------------------------------------------- bounded waits
/// Counts time spent waiting, in TSC ticks, ignoring jumps (> 50 ms between two polls, or backwards):
/// a pause for a live migration does not count as the device failing to answer.
pub const Deadline = struct {
    last: u64,
    spent: u64 = 0,
    limit: u64,
    jump: u64,
    polls: u32 = 0,

    pub fn start(ms: u64) Deadline {
        return .{ .last = probe.rdtsc(), .limit = ms * probe.tsc_khz, .jump = 50 * probe.tsc_khz };
    }
    /// Call once per poll; reads the TSC every 64 calls.
    pub fn expired(self: *Deadline) bool {
        self.polls +%= 1;
        if (self.polls & 63 != 0) return false;
        const now = probe.rdtsc();
        if (now > self.last and now - self.last <= self.jump) self.spent += now - self.last;
        self.last = now;
        return self.spent >= self.limit;
    }
};

// ---------------------------------------------------------------- split virtqueue
pub const Used = struct { id: u32, len: u32 };

pub const Queue = struct {
    index: u16 = 0,
    size: u16 = 0, // power of two
    desc: u64 = 0,
    avail: u64 = 0,
    used: u64 = 0,
    notify: u64 = 0,
    next_avail: u16 = 0, // what avail.idx will be published as
    last_used: u16 = 0, // next used entry to consume
    kicks: u64 = 0,

    pub fn setDesc(q: *Queue, i: u16, addr: u64, len: u32, flags: u16, next: u16) void {
        const d = q.desc + @as(u64, i) * 16;
        wr(u64, d, addr);
        wr(u32, d + 8, len);
        wr(u16, d + 12, flags);
        wr(u16, d + 14, next);
    }
    /// Queues a chain head; invisible to the device until publish().
    pub fn push(q: *Queue, head: u16) void {
        wr(u16, q.avail + 4 + @as(u64, q.next_avail & (q.size - 1)) * 2, head);
        q.next_avail +%= 1;
    }
    pub fn publish(q: *Queue) void {
        barrier();
        wr(u16, q.avail + 2, q.next_avail);
    }
    /// Notifies the device unless it said it does not need it (VIRTQ_USED_F_NO_NOTIFY).
    pub fn kick(q: *Queue) void {
        mfence(); // the avail.idx store must be visible before used.flags is read
        if (rd(u16, q.used) & 1 != 0) return;
        wr(u16, q.notify, q.index);
        q.kicks += 1;
    }
    /// Number of used entries not consumed yet (a value > size means a broken device).
    pub fn pending(q: *Queue) u16 {
        const n = rd(u16, q.used + 2) -% q.last_used;
        barrier();
        return n;
    }
    pub fn pop(q: *Queue) Used {
        const e = q.used + 4 + @as(u64, q.last_used & (q.size - 1)) * 8;
        q.last_used +%= 1;
        return .{ .id = rd(u32, e), .len = rd(u32, e + 4) };
    }
};

// ---------------------------------------------------------------- the transport
pub const Error = error{
    NoCommonCap,
    NoNotifyCap,
    NoDeviceCap,
    IoBar,
    NoSpace,
    BadBar,
    ResetTimeout,
    NoVersion1,
    FeaturesRejected,
    NoQueue,
    NoMemory,
};

const Cap = struct { bar: u8 = 0xff, offset: u32 = 0, length: u32 = 0, mult: u32 = 0 };

pub const Device = struct {
    f: pci.Fn,
    vendor: u16,
    device: u16,
    bars: pci.Bars = .{},
    common: u64 = 0,
    notify_base: u64 = 0,
    notify_mult: u32 = 0,
    notify_len: u32 = 0,
    devcfg: u64 = 0,
    devcfg_len: u32 = 0,
    features: u64 = 0, // negotiated
    offered: u64 = 0,
    num_queues: u16 = 0,

    const Caps = struct { c: [5]Cap = [_]Cap{.{}} ** 5 };

    fn visit(caps: *Caps, f: pci.Fn, ptr: u8, head: u32) void {
        if (head & 0xff != 0x09) return; // vendor-specific
        const cfg_type: u8 = @truncate(head >> 24);
        if (cfg_type < CAP_COMMON or cfg_type > CAP_DEVICE) return;
        if (caps.c[cfg_type].bar != 0xff) return; // the first of each type wins
        const bar: u8 = @truncate(f.read32(ptr + 4));
        if (bar > 5) return; // reserved BAR numbers: skip, as the spec says
        caps.c[cfg_type] = .{
            .bar = bar,
            .offset = f.read32(ptr + 8),
            .length = f.read32(ptr + 12),
            .mult = if (cfg_type == CAP_NOTIFY) f.read32(ptr + 16) else 0,
        };
    }

    /// Finds the capabilities, maps (and if needed assigns) their BARs, enables the function.
    pub fn open(found: pci.Found) Error!Device {
        var d = Device{ .f = found.f, .vendor = found.vendor, .device = found.device };
        var caps = Caps{};
        pci.capabilities(found.f, &caps, visit);
        const common = caps.c[CAP_COMMON];
        const notify = caps.c[CAP_NOTIFY];
        const dev = caps.c[CAP_DEVICE];
        if (common.bar == 0xff) return error.NoCommonCap;
        if (notify.bar == 0xff) return error.NoNotifyCap;
        if (dev.bar == 0xff) return error.NoDeviceCap;
        d.common = try d.bars.map(found.f, common.bar) + common.offset;
        d.notify_base = try d.bars.map(found.f, notify.bar) + notify.offset;
        d.notify_mult = notify.mult;
        d.notify_len = notify.length;
        d.devcfg = try d.bars.map(found.f, dev.bar) + dev.offset;
        d.devcfg_len = dev.length;
        pci.enable(found.f);
        return d;
    }

    pub fn status(d: *Device) u8 {
        return rd(u8, d.common + C_STATUS);
    }
    fn setStatus(d: *Device, s: u8) void {
        wr(u8, d.common + C_STATUS, s);
    }

    /// Reset, ACKNOWLEDGE|DRIVER, features (VERSION_1 required; `want` & offered), FEATURES_OK.
    pub fn negotiate(d: *Device, want: u64, timeout_ms: u64) Error!void {
        d.setStatus(0);
        var dl = Deadline.start(timeout_ms);
        while (d.status() != 0) {
            if (dl.expired()) return error.ResetTimeout;
            probe.cpuPause();
        }
        d.setStatus(S_ACKNOWLEDGE);
        d.setStatus(S_ACKNOWLEDGE | S_DRIVER);
        wr(u32, d.common + C_DFSELECT, 0);
        const lo = rd(u32, d.common + C_DF);
        wr(u32, d.common + C_DFSELECT, 1);
        const hi = rd(u32, d.common + C_DF);
        d.offered = (@as(u64, hi) << 32) | lo;
        if (d.offered & F_VERSION_1 == 0) {
            d.setStatus(S_FAILED);
            return error.NoVersion1;
        }
        d.features = d.offered & (want | F_VERSION_1);
        wr(u32, d.common + C_GFSELECT, 0);
        wr(u32, d.common + C_GF, @truncate(d.features));
        wr(u32, d.common + C_GFSELECT, 1);
        wr(u32, d.common + C_GF, @truncate(d.features >> 32));
        d.setStatus(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        if (d.status() & S_FEATURES_OK == 0) {
            d.setStatus(S_FAILED);
            return error.FeaturesRejected;
        }
        d.num_queues = rd(u16, d.common + C_NUM_QUEUES);
    }

    /// Sets up queue `index` with at most `max` entries (rounded down to a power of two); rings in
    /// DMA memory, avail.flags = VIRTQ_AVAIL_F_NO_INTERRUPT, then queue_enable = 1.
    pub fn setupQueue(d: *Device, index: u16, max: u16) Error!Queue {
        if (index >= d.num_queues) return error.NoQueue;
        wr(u16, d.common + C_Q_SELECT, index);
        const dev_max = rd(u16, d.common + C_Q_SIZE);
        if (dev_max == 0) return error.NoQueue;
        var size: u16 = 1;
        while (size * 2 <= @min(dev_max, max)) size *= 2;
        if (size != dev_max) wr(u16, d.common + C_Q_SIZE, size);
        const n: u64 = size;
        var q = Queue{ .index = index, .size = size };
        q.desc = alloc(16 * n, 4096) orelse return error.NoMemory;
        q.avail = alloc(6 + 2 * n, 4096) orelse return error.NoMemory;
        q.used = alloc(6 + 8 * n, 4096) orelse return error.NoMemory;
        wr(u16, q.avail, 1); // VIRTQ_AVAIL_F_NO_INTERRUPT: we poll
        wr(u32, d.common + C_Q_DESCLO, @truncate(q.desc));
        wr(u32, d.common + C_Q_DESCHI, @truncate(q.desc >> 32));
        wr(u32, d.common + C_Q_AVAILLO, @truncate(q.avail));
        wr(u32, d.common + C_Q_AVAILHI, @truncate(q.avail >> 32));
        wr(u32, d.common + C_Q_USEDLO, @truncate(q.used));
        wr(u32, d.common + C_Q_USEDHI, @truncate(q.used >> 32));
        const noff = rd(u16, d.common + C_Q_NOFF);
        q.notify = d.notify_base + @as(u64, noff) * d.notify_mult;
        wr(u16, d.common + C_Q_ENABLE, 1);
        return q;
    }

    pub fn driverOk(d: *Device) void {
        d.setStatus(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    }

    pub fn cfg8(d: *Device, off: u32) u8 {
        return rd(u8, d.devcfg + off);
    }
    pub fn cfg16(d: *Device, off: u32) u16 {
        return rd(u16, d.devcfg + off);
    }
    pub fn cfg32(d: *Device, off: u32) u32 {
        return rd(u32, d.devcfg + off);
    }
    /// A 64-bit field as two 32-bit reads, retried while config_generation moves.
    pub fn cfg64(d: *Device, off: u32) u64 {
        var tries: u32 = 0;
        while (true) : (tries += 1) {
            const g0 = rd(u8, d.common + C_CFGGEN);
            const lo = rd(u32, d.devcfg + off);
            const hi = rd(u32, d.devcfg + off + 4);
            if (rd(u8, d.common + C_CFGGEN) == g0 or tries > 8) return (@as(u64, hi) << 32) | lo;
        }
    }
};
