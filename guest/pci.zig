//! PCI configuration space through the legacy 0xCF8/0xCFC mechanism, bus 0 only, and BAR mapping
//! for the probe guest's virtio drivers. Every access here is two port exits (~16 µs emulated,
//! ~120 µs native on the PVM), so callers do this once at set-up and never on a data path.
//!
//! BARs the firmware or VMM left at 0 (or placed above 4 GiB, outside the guest's identity map) are
//! assigned here, in the 32-bit window from 0xC000_0000, above every memory BAR already decoded there.
const std = @import("std");

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

/// Where BARs are assigned when they must be (identity-mapped by the guest's page tables).
pub const WINDOW_BASE: u64 = 0xc000_0000;
/// The window ends below the IOAPIC (0xFEC0_0000).
pub const WINDOW_END: u64 = 0xfec0_0000;

pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;

inline fn outl(port: u16, v: u32) void {
    asm volatile ("outl %[v], %[p]"
        :
        : [v] "{eax}" (v),
          [p] "{dx}" (port),
    );
}
inline fn inl(port: u16) u32 {
    return asm volatile ("inl %[p], %[v]"
        : [v] "={eax}" (-> u32),
        : [p] "{dx}" (port),
    );
}
inline fn outw(port: u16, v: u16) void {
    asm volatile ("outw %[v], %[p]"
        :
        : [v] "{ax}" (v),
          [p] "{dx}" (port),
    );
}
inline fn inw(port: u16) u16 {
    return asm volatile ("inw %[p], %[v]"
        : [v] "={ax}" (-> u16),
        : [p] "{dx}" (port),
    );
}

/// One PCI function on bus 0.
pub const Fn = struct {
    dev: u8,
    func: u8,

    fn address(self: Fn, off: u8) u32 {
        return 0x8000_0000 | (@as(u32, self.dev) << 11) | (@as(u32, self.func) << 8) | (off & 0xfc);
    }
    pub fn read32(self: Fn, off: u8) u32 {
        outl(CONFIG_ADDRESS, self.address(off));
        return inl(CONFIG_DATA);
    }
    pub fn write32(self: Fn, off: u8, v: u32) void {
        outl(CONFIG_ADDRESS, self.address(off));
        outl(CONFIG_DATA, v);
    }
    pub fn read16(self: Fn, off: u8) u16 {
        outl(CONFIG_ADDRESS, self.address(off));
        return inw(CONFIG_DATA + (off & 2));
    }
    pub fn write16(self: Fn, off: u8, v: u16) void {
        outl(CONFIG_ADDRESS, self.address(off));
        outw(CONFIG_DATA + (off & 2), v);
    }
};

pub const Found = struct {
    f: Fn,
    vendor: u16,
    device: u16,
};

/// Scans bus 0 for the first function whose vendor:device is in `ids` (each `vendor << 16 | device`).
pub fn find(ids: []const u32) ?Found {
    var dev: u8 = 0;
    while (dev < 32) : (dev += 1) {
        const f0 = Fn{ .dev = dev, .func = 0 };
        const id0 = f0.read32(0x00);
        if (id0 & 0xffff == 0xffff) continue;
        const nfunc: u8 = if (f0.read32(0x0c) & 0x0080_0000 != 0) 8 else 1;
        var func: u8 = 0;
        while (func < nfunc) : (func += 1) {
            const f = Fn{ .dev = dev, .func = func };
            const id = if (func == 0) id0 else f.read32(0x00);
            if (id & 0xffff == 0xffff) continue;
            const key = ((id & 0xffff) << 16) | (id >> 16);
            for (ids) |want| if (want == key) return .{ .f = f, .vendor = @truncate(id), .device = @truncate(id >> 16) };
        }
    }
    return null;
}

/// The first free address in the window: above every 32-bit memory BAR that bus 0 already decodes
/// inside it. Only needed when a BAR must be assigned (costs ~6 config reads per function).
fn windowCursor() u64 {
    var cursor: u64 = WINDOW_BASE;
    var dev: u8 = 0;
    while (dev < 32) : (dev += 1) {
        const f0 = Fn{ .dev = dev, .func = 0 };
        if (f0.read32(0x00) & 0xffff == 0xffff) continue;
        const nfunc: u8 = if (f0.read32(0x0c) & 0x0080_0000 != 0) 8 else 1;
        var func: u8 = 0;
        while (func < nfunc) : (func += 1) {
            const f = Fn{ .dev = dev, .func = func };
            if (func != 0 and f.read32(0x00) & 0xffff == 0xffff) continue;
            const hdr = (f.read32(0x0c) >> 16) & 0x7f;
            const nbars: u8 = if (hdr == 0) 6 else if (hdr == 1) 2 else 0;
            if (f.read16(0x04) & CMD_MEMORY == 0) continue; // decodes nothing
            var i: u8 = 0;
            while (i < nbars) : (i += 1) {
                const lo = f.read32(0x10 + 4 * i);
                if (lo & 1 != 0) continue; // I/O BAR
                const is64 = (lo >> 1) & 3 == 2;
                var addr: u64 = lo & 0xffff_fff0;
                if (is64) {
                    addr |= @as(u64, f.read32(0x10 + 4 * (i + 1))) << 32;
                }
                // The end needs the size: probe it (decoding is off for the few accesses).
                if (addr >= WINDOW_BASE and addr < WINDOW_END) {
                    const size = probeSize(f, i, is64);
                    cursor = @max(cursor, addr + size);
                }
                if (is64) i += 1;
            }
        }
    }
    return cursor;
}

/// Size of BAR `i` (memory decoding must be off, or is turned off for the probe and restored).
fn probeSize(f: Fn, i: u8, is64: bool) u64 {
    const off: u8 = 0x10 + 4 * i;
    const cmd = f.read16(0x04);
    if (cmd & CMD_MEMORY != 0) f.write16(0x04, cmd & ~CMD_MEMORY);
    const lo = f.read32(off);
    f.write32(off, 0xffff_ffff);
    var mask: u64 = f.read32(off) & 0xffff_fff0;
    f.write32(off, lo);
    if (is64) {
        const hi = f.read32(off + 4);
        f.write32(off + 4, 0xffff_ffff);
        mask |= @as(u64, f.read32(off + 4)) << 32;
        f.write32(off + 4, hi);
    } else {
        mask |= 0xffff_ffff_0000_0000;
    }
    if (cmd & CMD_MEMORY != 0) f.write16(0x04, cmd);
    if (mask == 0xffff_ffff_0000_0000 or mask == 0) return 0;
    return (~mask) +% 1;
}

pub const BarError = error{ IoBar, NoSpace, BadBar };

/// BAR addresses of one function, resolved once.
pub const Bars = struct {
    addr: [6]u64 = .{ 0, 0, 0, 0, 0, 0 },
    assigned: u8 = 0, // how many BARs this guest had to assign
    cursor: u64 = 0, // 0 = not computed yet

    /// Returns the guest-physical address of memory BAR `i`, assigning it in the window first if it
    /// is unassigned or above 4 GiB. Memory decoding must be enabled by the caller afterwards.
    pub fn map(self: *Bars, f: Fn, i: u8) BarError!u64 {
        if (i > 5) return error.BadBar;
        if (self.addr[i] != 0) return self.addr[i];
        const off: u8 = 0x10 + 4 * i;
        const lo = f.read32(off);
        if (lo & 1 != 0) return error.IoBar;
        const is64 = (lo >> 1) & 3 == 2;
        if (is64 and i == 5) return error.BadBar;
        var addr: u64 = lo & 0xffff_fff0;
        if (is64) addr |= @as(u64, f.read32(off + 4)) << 32;
        if (addr == 0 or addr + 0x1000 > WINDOW_END) {
            const size = probeSize(f, i, is64);
            if (size == 0 or size > (1 << 30)) return error.BadBar;
            if (self.cursor == 0) self.cursor = windowCursor();
            const base = std.mem.alignForward(u64, self.cursor, @max(size, 0x1000));
            if (base + size > WINDOW_END) return error.NoSpace;
            const cmd = f.read16(0x04);
            if (cmd & CMD_MEMORY != 0) f.write16(0x04, cmd & ~CMD_MEMORY);
            f.write32(off, @truncate(base));
            if (is64) f.write32(off + 4, 0);
            if (cmd & CMD_MEMORY != 0) f.write16(0x04, cmd);
            self.cursor = base + size;
            self.assigned += 1;
            addr = base;
        }
        self.addr[i] = addr;
        return addr;
    }
};

/// Turns on memory decoding and bus mastering (the device DMAs the rings) and turns INTx off:
/// the probe never takes an interrupt.
pub fn enable(f: Fn) void {
    const cmd = f.read16(0x04);
    const want = cmd | CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE;
    if (want != cmd) f.write16(0x04, want);
}

/// Walks the capability list; calls `visit(ctx, ptr, first_dword)` for each entry (bounded: 48).
pub fn capabilities(f: Fn, ctx: anytype, comptime visit: fn (@TypeOf(ctx), Fn, u8, u32) void) void {
    if (f.read16(0x06) & (1 << 4) == 0) return;
    var ptr: u8 = @truncate(f.read32(0x34) & 0xfc);
    var n: u32 = 0;
    while (ptr >= 0x40 and n < 48) : (n += 1) {
        const head = f.read32(ptr);
        visit(ctx, f, ptr, head);
        ptr = @truncate((head >> 8) & 0xfc);
    }
}
