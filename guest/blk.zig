//! mode=blk: a polled virtio-blk driver that writes a self-checking pattern, flushes, reads it back
//! and verifies, round after round (PROTOCOL.md, "mode=blk").
//!
//! Each 512-byte sector of round r at sector s holds u64 words (little endian):
//!   w[0] = "PROBEBLK" magic, w[1] = r, w[2] = s, w[3..63] = fill(r, s, i), w[63] = checksum(w[0..63])
//! so a lost write (stale round), a misplaced one (wrong sector) or a torn one (checksum) is caught.
//! The last completed round lives in guest RAM (`last_round`), so after a live migration the next
//! round knows what the image must hold.
const std = @import("std");
const probe = @import("probe.zig");
const pci = @import("pci.zig");
const virtio = @import("virtio.zig");
const rd = virtio.rd;
const wr = virtio.wr;

const IDS = [_]u32{ 0x1af4_1042, 0x1af4_1001 };

const F_SIZE_MAX: u64 = 1 << 1;
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

const S_OK: u8 = 0;

pub const MAGIC: u64 = 0x4b4c_4245_424f_5250; // "PROBEBLK"
const FILL_STEP: u64 = 0x9e37_79b9_7f4a_7c15;
const MAX_DEPTH = 64;
const MAX_FAIL_LINES = 4; // per round

/// The last round whose read-back completed. Guest RAM: it migrates with the guest.
pub var last_round: u64 = 0;
/// Sectors written (or read, read-only) so far: the progress count.
var count: u64 = 0;
/// Polls that found no completion yet. Written on every poll, so a guest waiting for its disk (a
/// slow host flush) still dirties memory, as a real driver's bookkeeping does: a migration pass
/// never finds this guest's RAM clean while it runs.
var idle_polls: u64 = 0;

/// One poll of the used ring that found nothing: count it, then pause.
fn idlePoll() void {
    const p: *volatile u64 = &idle_polls;
    p.* +%= 1;
    probe.cpuPause();
}

pub fn fill(round: u64, sector: u64) u64 {
    return probe.mix((round << 40) ^ sector);
}

/// FNV-1a over 64-bit words (prime 2^40 + 0x1b3).
pub fn checksum(words: [*]const u64, n: usize) u64 {
    var c: u64 = 0xcbf2_9ce4_8422_2325;
    for (0..n) |i| c = (c ^ words[i]) *% 0x100_0000_01b3;
    return c;
}

fn writeSector(addr: u64, round: u64, sector: u64) void {
    const w: [*]u64 = @ptrFromInt(addr);
    w[0] = MAGIC;
    w[1] = round;
    w[2] = sector;
    const f = fill(round, sector);
    var i: usize = 3;
    while (i < 63) : (i += 1) w[i] = f +% FILL_STEP *% i;
    w[63] = checksum(w, 63);
}

const Why = enum { ok, magic, checksum, sector, stale };
fn checkSector(addr: u64, round: u64, sector: u64) Why {
    const w: [*]const u64 = @ptrFromInt(addr);
    if (w[0] != MAGIC) return .magic;
    if (w[63] != checksum(w, 63)) return .checksum;
    if (w[2] != sector) return .sector;
    if (w[1] != round) return .stale;
    return .ok;
}

const Req = struct { kind: u32, sector: u64, sectors: u32 };

const Err = error{ Timeout, BadUsed };

const Blk = struct {
    dev: virtio.Device,
    q: virtio.Queue = .{},
    depth: u32 = 1,
    req_sectors: u32 = 128,
    hdrs: u64 = 0,
    status: u64 = 0,
    data: u64 = 0,
    capacity: u64 = 0,
    ro: bool = false,
    flush: bool = false,
    reqs: [MAX_DEPTH]Req = undefined,
    bad_id: u32 = 0,
    bad_len: u32 = 0,

    fn dataAddr(b: *Blk, k: usize) u64 {
        return b.data + @as(u64, k) * b.req_sectors * 512;
    }

    /// Descriptor chain of request k: 3k header (16 B) -> 3k+1 data -> 3k+2 status (1 B).
    fn submit(b: *Blk, n: usize) void {
        for (0..n) |k| b.pushReq(k);
        b.q.publish();
        b.q.kick();
    }

    /// Queues request k (b.reqs[k]); the device sees it after publish().
    fn pushReq(b: *Blk, k: usize) void {
        {
            const r = b.reqs[k];
            const hdr = b.hdrs + k * 16;
            wr(u32, hdr, r.kind);
            wr(u32, hdr + 4, 0);
            wr(u64, hdr + 8, r.sector);
            wr(u8, b.status + k, 0xff);
            const d: u16 = @intCast(3 * k);
            const bytes: u32 = if (r.kind == T_GET_ID) 20 else r.sectors * 512;
            if (r.kind == T_FLUSH) {
                b.q.setDesc(d, hdr, 16, virtio.D_NEXT, d + 2);
            } else {
                b.q.setDesc(d, hdr, 16, virtio.D_NEXT, d + 1);
                const wflag: u16 = if (r.kind == T_OUT) 0 else virtio.D_WRITE;
                b.q.setDesc(d + 1, b.dataAddr(k), bytes, virtio.D_NEXT | wflag, d + 2);
            }
            b.q.setDesc(d + 2, b.status + k, 1, virtio.D_WRITE, 0);
            b.q.push(d);
        }
    }

    /// Waits until at least one of the requests in `outstanding` completed; takes every used entry
    /// there is (each must be a head 3k of an outstanding request, len <= its writable bytes).
    /// Returns the completed requests as a bit mask.
    fn reapSome(b: *Blk, outstanding: u64) Err!u64 {
        var dl = virtio.Deadline.start(probe.cfg.io_timeout_ms);
        while (true) {
            const p = b.q.pending();
            if (p == 0) {
                if (dl.expired()) return error.Timeout;
                idlePoll();
                continue;
            }
            if (p > b.q.size) {
                b.bad_id = p;
                b.bad_len = 0;
                return error.BadUsed;
            }
            var done: u64 = 0;
            for (0..p) |_| {
                const u = b.q.pop();
                const k = u.id / 3;
                if (u.id % 3 != 0 or k >= MAX_DEPTH or (outstanding & ~done) & (@as(u64, 1) << @intCast(k)) == 0) {
                    b.bad_id = u.id;
                    b.bad_len = u.len;
                    return error.BadUsed;
                }
                const r = b.reqs[k];
                const writable: u32 = switch (r.kind) {
                    T_IN => r.sectors * 512 + 1,
                    T_GET_ID => 21,
                    else => 1,
                };
                if (u.len > writable) {
                    b.bad_id = u.id;
                    b.bad_len = u.len;
                    return error.BadUsed;
                }
                done |= @as(u64, 1) << @intCast(k);
            }
            return done;
        }
    }

    /// Waits for all n requests of the batch; checks every used entry (id = a head of this batch
    /// not completed yet, len <= the chain's writable bytes).
    fn wait(b: *Blk, n: usize) Err!void {
        var outstanding: u64 = if (n == 64) ~@as(u64, 0) else (@as(u64, 1) << @intCast(n)) - 1;
        var dl = virtio.Deadline.start(probe.cfg.io_timeout_ms);
        while (outstanding != 0) {
            const p = b.q.pending();
            if (p == 0) {
                if (dl.expired()) return error.Timeout;
                idlePoll();
                continue;
            }
            if (p > b.q.size) {
                b.bad_id = p;
                b.bad_len = 0;
                return error.BadUsed;
            }
            for (0..p) |_| {
                const u = b.q.pop();
                const k = u.id / 3;
                if (u.id % 3 != 0 or k >= n or outstanding & (@as(u64, 1) << @intCast(k)) == 0) {
                    b.bad_id = u.id;
                    b.bad_len = u.len;
                    return error.BadUsed;
                }
                const r = b.reqs[k];
                const writable: u32 = switch (r.kind) {
                    T_IN => r.sectors * 512 + 1,
                    T_GET_ID => 21,
                    else => 1,
                };
                if (u.len > writable) {
                    b.bad_id = u.id;
                    b.bad_len = u.len;
                    return error.BadUsed;
                }
                outstanding &= ~(@as(u64, 1) << @intCast(k));
            }
        }
    }

    fn statusOf(b: *Blk, k: usize) u8 {
        return rd(u8, b.status + k);
    }
};

fn line(comptime parts: []const u8) probe.Line {
    var l = probe.Line{};
    l.s(parts);
    return l;
}

fn fail(reason: []const u8) noreturn {
    var l = line("PROBE BLK ERROR reason=");
    l.s(reason);
    _ = probe.emit(&l);
    probe.idle();
}

fn ioFail(b: *Blk, e: Err) noreturn {
    switch (e) {
        error.Timeout => {
            var l = line("PROBE BLK TIMEOUT");
            _ = probe.emit(&l);
        },
        error.BadUsed => {
            var l = line("PROBE BLK ERROR reason=used id=");
            l.d(b.bad_id);
            l.s(" len=");
            l.d(b.bad_len);
            _ = probe.emit(&l);
        },
    }
    probe.idle();
}

/// Prints `PROBE VIRTIO ...` (what was found and negotiated) for blk and net alike.
pub fn reportDevice(d: *virtio.Device, queues: []const u16) void {
    var l = line("PROBE VIRTIO dev=");
    const hex = "0123456789abcdef";
    l.s(&[_]u8{ hex[0], hex[0], ':', hex[d.f.dev >> 4], hex[d.f.dev & 15], '.', hex[d.f.func] });
    l.s(" id=");
    for ([_]u16{ d.vendor, d.device }, 0..) |v, i| {
        if (i == 1) l.s(":");
        l.s(&[_]u8{ hex[v >> 12], hex[(v >> 8) & 15], hex[(v >> 4) & 15], hex[v & 15] });
    }
    l.s(" features=");
    l.x(d.features);
    l.s(" queues=");
    for (queues, 0..) |q, i| {
        if (i != 0) l.s(",");
        l.d(q);
    }
    l.s(" common=");
    l.x(d.common);
    l.s(" assigned=");
    l.d(d.bars.assigned);
    _ = probe.emit(&l);
}

fn rate(bytes: u64, ticks: u64) u64 {
    if (ticks == 0) return 0;
    return @intCast(@as(u128, bytes) * probe.tsc_khz * 1000 / 1024 / ticks);
}

pub fn run() noreturn {
    const cfg = &probe.cfg;
    const found = pci.find(&IDS) orelse fail("nodev");
    var dev = virtio.Device.open(found) catch |e| fail(@errorName(e));
    dev.negotiate(F_RO | F_FLUSH | F_SIZE_MAX | F_SEG_MAX, cfg.io_timeout_ms) catch |e| fail(@errorName(e));
    var b = Blk{ .dev = dev };
    b.q = b.dev.setupQueue(0, 192) catch |e| fail(@errorName(e));
    b.dev.driverOk();

    b.capacity = b.dev.cfg64(0);
    b.ro = b.dev.features & F_RO != 0;
    b.flush = b.dev.features & F_FLUSH != 0;
    var req_bytes: u64 = cfg.blk_req_kib * 1024;
    if (b.dev.features & F_SIZE_MAX != 0) {
        const size_max = b.dev.cfg32(8);
        if (size_max >= 512) req_bytes = @min(req_bytes, size_max & ~@as(u64, 511));
    }
    b.req_sectors = @intCast(@max(req_bytes / 512, 1));
    b.depth = @intCast(@min(cfg.blk_depth, b.q.size / 3, MAX_DEPTH));
    b.hdrs = virtio.alloc(16 * MAX_DEPTH, 4096) orelse fail("nomem");
    b.status = virtio.alloc(MAX_DEPTH, 64) orelse fail("nomem");
    b.data = virtio.alloc(@as(u64, b.depth) * b.req_sectors * 512, 4096) orelse fail("nomem");
    reportDevice(&b.dev, &[_]u16{b.q.size});

    // GET_ID: 20 bytes, NUL-padded when shorter.
    var serial: [20]u8 = undefined;
    var serial_len: usize = 0;
    b.reqs[0] = .{ .kind = T_GET_ID, .sector = 0, .sectors = 0 };
    b.submit(1);
    b.wait(1) catch |e| ioFail(&b, e);
    if (b.statusOf(0) == S_OK) {
        for (0..20) |i| {
            const c = rd(u8, b.data + i);
            if (c == 0) break;
            serial[serial_len] = if (c > ' ' and c < 0x7f) c else '_';
            serial_len += 1;
        }
    }
    var l = line("PROBE BLK READY capacity=");
    l.d(b.capacity);
    l.s(" ro=");
    l.d(@intFromBool(b.ro));
    l.s(" serial=");
    l.s(if (serial_len == 0) "-" else serial[0..serial_len]);
    _ = probe.emit(&l);

    const total: u64 = @min(cfg.blk_mib * 2048, b.capacity);
    var bsp = probe.Bsp{};
    bsp.init();
    var readonly = b.ro;
    if (b.ro) {
        // The device says read-only: one write must come back with VIRTIO_BLK_S_IOERR, data unchanged.
        writeSector(b.data, last_round + 1, 0);
        b.reqs[0] = .{ .kind = T_OUT, .sector = 0, .sectors = 1 };
        b.submit(1);
        b.wait(1) catch |e| ioFail(&b, e);
        writeStatus(b.statusOf(0));
    }
    var ro_sum: u64 = 0;
    var ro_have_sum = false;
    while (true) {
        const round = last_round + 1;
        if (!readonly) {
            switch (rwRound(&b, &bsp, round, total)) {
                .ok => {},
                .write_failed => readonly = true,
            }
        }
        if (readonly) {
            const r = roRound(&b, &bsp, total);
            var m = probe.Line{};
            if (ro_have_sum and r.sum != ro_sum) {
                m.s("PROBE BLK READONLY FAIL round=");
                m.d(round);
                m.s(" want=");
                m.x(ro_sum);
                m.s(" got=");
                m.x(r.sum);
            } else {
                m.s("PROBE BLK READONLY ok round=");
                m.d(round);
                m.s(" sum=");
                m.x(r.sum);
                m.s(" valid=");
                m.d(r.valid);
            }
            _ = probe.emit(&m);
            ro_sum = r.sum;
            ro_have_sum = true;
        }
        last_round = round;
        if (cfg.rounds != 0 and round >= cfg.rounds) {
            _ = probe.progress(0, count);
            probe.doExit();
        }
    }
}

fn writeStatus(s: u8) void {
    var l = line("PROBE BLK WRITE status=");
    l.d(s);
    _ = probe.emit(&l);
}

/// Fills b.reqs with the next batch from `s` on; returns how many.
fn batch(b: *Blk, kind: u32, s: *u64, total: u64) usize {
    var n: usize = 0;
    while (n < b.depth and s.* < total) : (n += 1) {
        const cnt: u32 = @intCast(@min(b.req_sectors, total - s.*));
        b.reqs[n] = .{ .kind = kind, .sector = s.*, .sectors = cnt };
        s.* += cnt;
    }
    return n;
}

const RoundResult = enum { ok, write_failed };

/// Takes the next request of `kind` from sector `s.*` into slot k; false when the area is done.
fn nextReq(b: *Blk, k: usize, kind: u32, s: *u64, total: u64) bool {
    if (s.* >= total) return false;
    const cnt: u32 = @intCast(@min(b.req_sectors, total - s.*));
    b.reqs[k] = .{ .kind = kind, .sector = s.*, .sectors = cnt };
    s.* += cnt;
    return true;
}

/// Waits for every request in `outstanding` (after a failure: nothing may stay in flight).
fn drainAll(b: *Blk, outstanding: u64) void {
    var left = outstanding;
    while (left != 0) left &= ~(b.reapSome(left) catch |e| ioFail(b, e));
}

fn rwRound(b: *Blk, bsp: *probe.Bsp, round: u64, total: u64) RoundResult {
    var nreq_w: u64 = 0;
    var nreq_r: u64 = 0;
    // Write, keeping `depth` requests in flight: each completion is refilled at once.
    var s: u64 = 0;
    var outstanding: u64 = 0;
    const tw0 = probe.rdtsc();
    for (0..b.depth) |k| {
        if (!nextReq(b, k, T_OUT, &s, total)) break;
        const r = b.reqs[k];
        for (0..r.sectors) |i| writeSector(b.dataAddr(k) + i * 512, round, r.sector + i);
        b.pushReq(k);
        outstanding |= @as(u64, 1) << @intCast(k);
        nreq_w += 1;
    }
    b.q.publish();
    b.q.kick();
    while (outstanding != 0) {
        const done = b.reapSome(outstanding) catch |e| ioFail(b, e);
        outstanding &= ~done;
        var refilled = false;
        for (0..b.depth) |k| {
            if (done & (@as(u64, 1) << @intCast(k)) == 0) continue;
            const st = b.statusOf(k);
            if (st != S_OK) {
                drainAll(b, outstanding);
                writeStatus(st);
                return .write_failed;
            }
            count += b.reqs[k].sectors;
            if (!nextReq(b, k, T_OUT, &s, total)) continue;
            const r = b.reqs[k];
            for (0..r.sectors) |i| writeSector(b.dataAddr(k) + i * 512, round, r.sector + i);
            b.pushReq(k);
            outstanding |= @as(u64, 1) << @intCast(k);
            nreq_w += 1;
            refilled = true;
        }
        if (refilled) {
            b.q.publish();
            b.q.kick();
        }
        _ = bsp.tick(count);
    }
    if (b.flush) {
        b.reqs[0] = .{ .kind = T_FLUSH, .sector = 0, .sectors = 0 };
        b.submit(1);
        b.wait(1) catch |e| ioFail(b, e);
        if (b.statusOf(0) != S_OK) {
            var l = line("PROBE BLK FLUSH status=");
            l.d(b.statusOf(0));
            _ = probe.emit(&l);
        }
    }
    const wticks = probe.rdtsc() -% tw0;
    // Read back and verify, `depth` in flight the same way.
    var fails: u64 = 0;
    s = 0;
    outstanding = 0;
    const tr0 = probe.rdtsc();
    for (0..b.depth) |k| {
        if (!nextReq(b, k, T_IN, &s, total)) break;
        zeroBuf(b.dataAddr(k), b.reqs[k].sectors); // nothing stale survives
        b.pushReq(k);
        outstanding |= @as(u64, 1) << @intCast(k);
        nreq_r += 1;
    }
    b.q.publish();
    b.q.kick();
    while (outstanding != 0) {
        const done = b.reapSome(outstanding) catch |e| ioFail(b, e);
        outstanding &= ~done;
        var refilled = false;
        for (0..b.depth) |k| {
            if (done & (@as(u64, 1) << @intCast(k)) == 0) continue;
            const r = b.reqs[k];
            const st = b.statusOf(k);
            if (st != S_OK) {
                if (fails < MAX_FAIL_LINES) {
                    var l = line("PROBE BLK READ status=");
                    l.d(st);
                    l.s(" sector=");
                    l.d(r.sector);
                    _ = probe.emit(&l);
                }
                fails += 1;
            } else {
                for (0..r.sectors) |i| {
                    const a = b.dataAddr(k) + i * 512;
                    const why = checkSector(a, round, r.sector + i);
                    if (why == .ok) continue;
                    if (fails < MAX_FAIL_LINES) verifyFail(a, r.sector + i, round, why);
                    fails += 1;
                }
            }
            if (!nextReq(b, k, T_IN, &s, total)) continue;
            zeroBuf(b.dataAddr(k), b.reqs[k].sectors);
            b.pushReq(k);
            outstanding |= @as(u64, 1) << @intCast(k);
            nreq_r += 1;
            refilled = true;
        }
        if (refilled) {
            b.q.publish();
            b.q.kick();
        }
        _ = bsp.tick(count);
    }
    const rticks = probe.rdtsc() -% tr0;
    if (fails == 0) {
        var l = line("PROBE BLK VERIFY ok round=");
        l.d(round);
        _ = probe.emit(&l);
    }
    const bytes = total * 512;
    var l = line("PROBE BLK RATE round=");
    l.d(round);
    l.s(" write_kibps=");
    l.d(rate(bytes, wticks));
    l.s(" read_kibps=");
    l.d(rate(bytes, rticks));
    l.s(" write_iops=");
    l.d(perSec(nreq_w, wticks));
    l.s(" read_iops=");
    l.d(perSec(nreq_r, rticks));
    l.s(" req_kib=");
    l.d(@as(u64, b.req_sectors) / 2);
    l.s(" depth=");
    l.d(b.depth);
    _ = probe.emit(&l);
    return .ok;
}

fn perSec(n: u64, ticks: u64) u64 {
    if (ticks == 0) return 0;
    return @intCast(@as(u128, n) * probe.tsc_khz * 1000 / ticks);
}

fn zeroBuf(addr: u64, sectors: u32) void {
    virtio.zero(addr, @as(u64, sectors) * 512);
}

fn verifyFail(addr: u64, sector: u64, round: u64, why: Why) void {
    const w: [*]const u64 = @ptrFromInt(addr);
    var l = line("PROBE BLK VERIFY FAIL sector=");
    l.d(sector);
    l.s(" want=");
    l.d(round);
    l.s(" got=");
    l.d(w[1]);
    l.s(" round=");
    l.d(round);
    l.s(" why=");
    l.s(@tagName(why));
    _ = probe.emit(&l);
}

const RoResult = struct { sum: u64, valid: u64 };

/// Reads [0, total): a checksum of everything there, and how many sectors hold a whole probe pattern.
fn roRound(b: *Blk, bsp: *probe.Bsp, total: u64) RoResult {
    var sum: u64 = 0xcbf2_9ce4_8422_2325;
    var valid: u64 = 0;
    var s: u64 = 0;
    while (s < total) {
        const n = batch(b, T_IN, &s, total);
        for (b.reqs[0..n], 0..) |r, k| zeroBuf(b.dataAddr(k), r.sectors);
        b.submit(n);
        b.wait(n) catch |e| ioFail(b, e);
        for (b.reqs[0..n], 0..) |r, k| {
            if (b.statusOf(k) != S_OK) {
                var l = line("PROBE BLK READ status=");
                l.d(b.statusOf(k));
                l.s(" sector=");
                l.d(r.sector);
                _ = probe.emit(&l);
                continue;
            }
            for (0..r.sectors) |i| {
                const a = b.dataAddr(k) + i * 512;
                const w: [*]const u64 = @ptrFromInt(a);
                sum = (sum ^ checksum(w, 64)) *% 0x100_0000_01b3;
                const why = checkSector(a, w[1], r.sector + i);
                if (why == .ok) valid += 1;
            }
            count += r.sectors;
        }
        _ = bsp.tick(count);
    }
    return .{ .sum = sum, .valid = valid };
}
