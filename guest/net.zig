//! mode=net: a polled virtio-net driver (PROTOCOL.md, "mode=net"). Every interval it broadcasts
//! `net_burst` UDP frames (to port 7777, payload `PROBE <seq>`); it keeps every RX buffer posted,
//! reports received frames (rate-limited), answers ARP requests for its `ip=`, and echoes the payload
//! of UDP datagrams to port 7778 back to their sender (UDP 7778 -> 7779).
//!
//! Queues: 0 = receiveq1, 1 = transmitq1. Without VIRTIO_NET_F_MRG_RXBUF and with VIRTIO_F_VERSION_1
//! the header is struct virtio_net_hdr_v1 (12 bytes); each RX buffer is one 2 KiB descriptor (at least
//! 1526 bytes are needed when no GSO feature is negotiated), TX descriptor i owns TX buffer i.
const std = @import("std");
const probe = @import("probe.zig");
const pci = @import("pci.zig");
const virtio = @import("virtio.zig");
const blk = @import("blk.zig");

const IDS = [_]u32{ 0x1af4_1041, 0x1af4_1000 };
const F_MAC: u64 = 1 << 5;

const HDR = 12; // virtio_net_hdr_v1
const BUF = 2048;
const MAX_Q = 256;
const RX_PRINTS_PER_SEC = 4;

pub const PORT_BCAST = 7777;
pub const PORT_ECHO = 7778;
pub const PORT_REPLY = 7779;

const Net = struct {
    dev: virtio.Device,
    rx: virtio.Queue = .{},
    tx: virtio.Queue = .{},
    rx_bufs: u64 = 0,
    tx_bufs: u64 = 0,
    mac: [6]u8 = .{ 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 },
    ip: [4]u8 = .{ 0, 0, 0, 0 },
    tx_free: [MAX_Q]u16 = undefined,
    tx_nfree: u16 = 0,
    tx_busy: [MAX_Q / 64]u64 = .{0} ** (MAX_Q / 64),
    rx_posted: [MAX_Q / 64]u64 = .{0} ** (MAX_Q / 64),
    tx_unpublished: bool = false,
    stall: ?virtio.Deadline = null,
    seq: u64 = 0,
    rx_count: u64 = 0,
    echo_count: u64 = 0,
    arp_count: u64 = 0,
    drop_count: u64 = 0,
    print_window: u64 = 0,
    prints: u32 = 0,
    bad_id: u32 = 0,
    bad_len: u32 = 0,
};

fn bit(set: []u64, i: u16) bool {
    return set[i >> 6] & (@as(u64, 1) << @intCast(i & 63)) != 0;
}
fn setBit(set: []u64, i: u16, on: bool) void {
    const m = @as(u64, 1) << @intCast(i & 63);
    if (on) set[i >> 6] |= m else set[i >> 6] &= ~m;
}

fn be16(p: [*]const u8) u16 {
    return (@as(u16, p[0]) << 8) | p[1];
}
fn put16(p: [*]u8, v: u16) void {
    p[0] = @truncate(v >> 8);
    p[1] = @truncate(v);
}

fn fail(reason: []const u8) noreturn {
    var l = probe.Line{};
    l.s("PROBE NET ERROR reason=");
    l.s(reason);
    _ = probe.emit(&l);
    probe.idle();
}

fn timeout() noreturn {
    var l = probe.Line{};
    l.s("PROBE NET TIMEOUT");
    _ = probe.emit(&l);
    probe.idle();
}

fn badUsed(q: []const u8, id: u32, len: u32) noreturn {
    var l = probe.Line{};
    l.s("PROBE NET ERROR reason=used queue=");
    l.s(q);
    l.s(" id=");
    l.d(id);
    l.s(" len=");
    l.d(len);
    _ = probe.emit(&l);
    probe.idle();
}

fn macStr(l: *probe.Line, m: [*]const u8) void {
    const hex = "0123456789abcdef";
    for (0..6) |i| {
        if (i != 0) l.s(":");
        l.s(&[_]u8{ hex[m[i] >> 4], hex[m[i] & 15] });
    }
}

// ---------------------------------------------------------------- TX
/// Reclaims finished TX buffers; validates each used entry.
fn reclaim(n: *Net) void {
    const p = n.tx.pending();
    if (p == 0) return;
    if (p > n.tx.size) badUsed("tx", p, 0);
    for (0..p) |_| {
        const u = n.tx.pop();
        if (u.id >= n.tx.size or !bit(&n.tx_busy, @intCast(u.id))) badUsed("tx", u.id, u.len);
        setBit(&n.tx_busy, @intCast(u.id), false);
        n.tx_free[n.tx_nfree] = @intCast(u.id);
        n.tx_nfree += 1;
    }
    // Progress: restart the stall clock while frames are still in flight.
    n.stall = if (n.tx_nfree < n.tx.size) virtio.Deadline.start(probe.cfg.io_timeout_ms) else null;
}

/// A free TX buffer (its frame area, after the 12-byte header), or null when all are in flight.
fn txGet(n: *Net) ?u16 {
    if (n.tx_nfree == 0) reclaim(n);
    if (n.tx_nfree == 0) return null;
    n.tx_nfree -= 1;
    return n.tx_free[n.tx_nfree];
}
fn txFrame(n: *Net, id: u16) [*]u8 {
    return @ptrFromInt(n.tx_bufs + @as(u64, id) * BUF + HDR);
}
/// Queues buffer `id` holding a `len`-byte frame (padded to 60 bytes); published by txFlush().
fn txPut(n: *Net, id: u16, len: usize) void {
    const f = txFrame(n, id);
    var flen = len;
    while (flen < 60) : (flen += 1) f[flen] = 0;
    const hdr: [*]u8 = @ptrFromInt(n.tx_bufs + @as(u64, id) * BUF);
    for (0..HDR) |i| hdr[i] = 0; // no checksum offload, no GSO, num_buffers 0
    n.tx.setDesc(id, n.tx_bufs + @as(u64, id) * BUF, @intCast(HDR + flen), 0, 0);
    n.tx.push(id);
    setBit(&n.tx_busy, id, true);
    n.tx_unpublished = true;
}
fn txFlush(n: *Net) void {
    if (!n.tx_unpublished) return;
    n.tx_unpublished = false;
    n.tx.publish();
    n.tx.kick();
    if (n.stall == null) n.stall = virtio.Deadline.start(probe.cfg.io_timeout_ms);
}

fn ipChecksum(h: [*]const u8, len: usize) u16 {
    var sum: u32 = 0;
    var i: usize = 0;
    while (i + 1 < len) : (i += 2) sum += be16(h + i);
    while (sum >> 16 != 0) sum = (sum & 0xffff) + (sum >> 16);
    return ~@as(u16, @truncate(sum));
}

/// Ethernet + IPv4 + UDP headers (42 bytes) for `payload` bytes; UDP checksum 0 (none).
fn udpHeaders(n: *Net, f: [*]u8, dst_mac: [*]const u8, dst_ip: [*]const u8, sport: u16, dport: u16, payload: usize) usize {
    for (0..6) |i| f[i] = dst_mac[i];
    for (0..6) |i| f[6 + i] = n.mac[i];
    put16(f + 12, 0x0800);
    const ip = f + 14;
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, @intCast(20 + 8 + payload));
    put16(ip + 4, @truncate(n.seq +% n.echo_count));
    put16(ip + 6, 0);
    ip[8] = 64;
    ip[9] = 17;
    put16(ip + 10, 0);
    for (0..4) |i| ip[12 + i] = n.ip[i];
    for (0..4) |i| ip[16 + i] = dst_ip[i];
    put16(ip + 10, ipChecksum(ip, 20));
    const udp = ip + 20;
    put16(udp, sport);
    put16(udp + 2, dport);
    put16(udp + 4, @intCast(8 + payload));
    put16(udp + 6, 0);
    return 42 + payload;
}

const BCAST = [_]u8{0xff} ** 6;

/// One broadcast `PROBE <seq>` to UDP port 7777. False when no TX buffer is free.
fn sendBroadcast(n: *Net) bool {
    const id = txGet(n) orelse return false;
    const f = txFrame(n, id);
    var l = probe.Line{};
    l.s("PROBE ");
    l.d(n.seq + 1);
    for (l.buf[0..l.len], 0..) |c, i| f[42 + i] = c;
    const len = udpHeaders(n, f, &BCAST, &BCAST, PORT_BCAST, PORT_BCAST, l.len);
    txPut(n, id, len);
    n.seq += 1;
    return true;
}

// ---------------------------------------------------------------- RX
fn rxFrame(n: *Net, f: [*]const u8, len: usize) void {
    n.rx_count += 1;
    if (len < 14) return;
    const ethertype = be16(f + 12);
    const now = probe.rdtsc();
    if (now -% n.print_window > probe.tsc_khz * 1000) {
        n.print_window = now;
        n.prints = 0;
    }
    if (n.prints < RX_PRINTS_PER_SEC) {
        n.prints += 1;
        var l = probe.Line{};
        l.s("PROBE NET RX len=");
        l.d(len);
        l.s(" from=");
        macStr(&l, f + 6);
        l.s(" ethertype=0x");
        const hex = "0123456789abcdef";
        l.s(&[_]u8{ hex[ethertype >> 12], hex[(ethertype >> 8) & 15], hex[(ethertype >> 4) & 15], hex[ethertype & 15] });
        _ = probe.emit(&l);
    }
    if (ethertype == 0x0806) arp(n, f, len);
    if (ethertype == 0x0800) ipv4(n, f, len);
}

/// Answers an ARP request (Ethernet/IPv4) for our address.
fn arp(n: *Net, f: [*]const u8, len: usize) void {
    if (len < 42) return;
    const a = f + 14;
    if (be16(a) != 1 or be16(a + 2) != 0x0800 or a[4] != 6 or a[5] != 4 or be16(a + 6) != 1) return;
    if (!std.mem.eql(u8, a[24..28], &n.ip)) return;
    const id = txGet(n) orelse {
        n.drop_count += 1;
        return;
    };
    const o = txFrame(n, id);
    for (0..6) |i| o[i] = f[6 + i];
    for (0..6) |i| o[6 + i] = n.mac[i];
    put16(o + 12, 0x0806);
    const r = o + 14;
    put16(r, 1);
    put16(r + 2, 0x0800);
    r[4] = 6;
    r[5] = 4;
    put16(r + 6, 2); // reply
    for (0..6) |i| r[8 + i] = n.mac[i];
    for (0..4) |i| r[14 + i] = n.ip[i];
    for (0..10) |i| r[18 + i] = a[8 + i]; // target = the requester's sha + spa
    txPut(n, id, 42);
    n.arp_count += 1;
}

/// UDP to port 7778: the payload goes back to the sender, UDP 7778 -> 7779.
fn ipv4(n: *Net, f: [*]const u8, len: usize) void {
    if (len < 14 + 20 + 8) return;
    const ip = f + 14;
    if (ip[0] >> 4 != 4 or ip[9] != 17) return;
    const ihl: usize = @as(usize, ip[0] & 15) * 4;
    if (ihl < 20 or 14 + ihl + 8 > len) return;
    const udp = ip + ihl;
    if (be16(udp + 2) != PORT_ECHO) return;
    const ulen: usize = be16(udp + 4);
    if (ulen < 8) return;
    const payload = @min(ulen - 8, len - 14 - ihl - 8, BUF - HDR - 42);
    const id = txGet(n) orelse {
        n.drop_count += 1;
        return;
    };
    const o = txFrame(n, id);
    for (0..payload) |i| o[42 + i] = udp[8 + i];
    const out = udpHeaders(n, o, f + 6, ip + 12, PORT_ECHO, PORT_REPLY, payload);
    txPut(n, id, out);
    n.echo_count += 1;
}

/// Consumes received buffers, reposts them, one kick for the lot.
fn pollRx(n: *Net) void {
    const p = n.rx.pending();
    if (p == 0) return;
    if (p > n.rx.size) badUsed("rx", p, 0);
    for (0..p) |_| {
        const u = n.rx.pop();
        if (u.id >= n.rx.size or !bit(&n.rx_posted, @intCast(u.id)) or u.len < HDR or u.len > BUF)
            badUsed("rx", u.id, u.len);
        const id: u16 = @intCast(u.id);
        const f: [*]const u8 = @ptrFromInt(n.rx_bufs + @as(u64, id) * BUF + HDR);
        rxFrame(n, f, u.len - HDR);
        n.rx.push(id); // descriptor id still describes buffer id
    }
    n.rx.publish();
    n.rx.kick();
}

fn perSec(count: u64, ticks: u64) u64 {
    if (ticks == 0) return 0;
    return @intCast(@as(u128, count) * probe.tsc_khz * 1000 / ticks);
}

pub fn run() noreturn {
    const cfg = &probe.cfg;
    const found = pci.find(&IDS) orelse fail("nodev");
    var dev = virtio.Device.open(found) catch |e| fail(@errorName(e));
    dev.negotiate(F_MAC, cfg.io_timeout_ms) catch |e| fail(@errorName(e));
    var n = Net{ .dev = dev, .ip = cfg.ip };
    n.rx = n.dev.setupQueue(0, MAX_Q) catch |e| fail(@errorName(e));
    n.tx = n.dev.setupQueue(1, MAX_Q) catch |e| fail(@errorName(e));
    n.rx_bufs = virtio.alloc(@as(u64, n.rx.size) * BUF, 4096) orelse fail("nomem");
    n.tx_bufs = virtio.alloc(@as(u64, n.tx.size) * BUF, 4096) orelse fail("nomem");
    if (n.dev.features & F_MAC != 0) {
        for (0..6) |i| n.mac[i] = n.dev.cfg8(@intCast(i));
    }
    // Post every RX buffer before DRIVER_OK.
    var i: u16 = 0;
    while (i < n.rx.size) : (i += 1) {
        n.rx.setDesc(i, n.rx_bufs + @as(u64, i) * BUF, BUF, virtio.D_WRITE, 0);
        n.rx.push(i);
        setBit(&n.rx_posted, i, true);
    }
    n.rx.publish();
    i = 0;
    while (i < n.tx.size) : (i += 1) {
        n.tx_free[i] = n.tx.size - 1 - i;
    }
    n.tx_nfree = n.tx.size;
    n.dev.driverOk();
    n.rx.kick();
    blk.reportDevice(&n.dev, &[_]u16{ n.rx.size, n.tx.size });

    var l = probe.Line{};
    l.s("PROBE NET READY mac=");
    macStr(&l, &n.mac);
    l.s(" ip=");
    for (n.ip, 0..) |b, k| {
        if (k != 0) l.s(".");
        l.d(b);
    }
    _ = probe.emit(&l);

    var deadline = probe.rdtsc(); // first frame at once
    var ticks: u64 = 0;
    var last_rx: u64 = 0;
    var last_t = probe.rdtsc();
    while (true) {
        const now = probe.rdtsc();
        if (now >= deadline or deadline - now > probe.interval_ticks) {
            const t0 = probe.rdtsc();
            var left = cfg.net_burst;
            var dl = virtio.Deadline.start(cfg.io_timeout_ms);
            while (left > 0) {
                if (sendBroadcast(&n)) {
                    left -= 1;
                    if (n.tx_nfree == 0 or left == 0) txFlush(&n);
                    continue;
                }
                txFlush(&n);
                pollRx(&n);
                if (dl.expired()) timeout();
                probe.cpuPause();
            }
            const t1 = probe.rdtsc();
            deadline = nextDeadline(deadline, t1);
            ticks += 1;
            var m = probe.Line{};
            m.s("PROBE NET TX seq=");
            m.d(n.seq);
            m.s(" rx=");
            m.d(n.rx_count);
            m.s(" echo=");
            m.d(n.echo_count);
            _ = probe.emit(&m);
            if (cfg.net_burst > 1) {
                var r = probe.Line{};
                r.s("PROBE NET RATE tx_fps=");
                r.d(perSec(cfg.net_burst, t1 -% t0));
                r.s(" rx_fps=");
                r.d(perSec(n.rx_count - last_rx, t1 -% last_t));
                _ = probe.emit(&r);
            }
            last_rx = n.rx_count;
            last_t = t1;
            _ = probe.progress(0, n.seq);
            if (cfg.rounds != 0 and ticks >= cfg.rounds) probe.doExit();
        }
        pollRx(&n);
        txFlush(&n); // echoes and ARP replies queued by pollRx
        reclaim(&n);
        if (n.stall) |*s| {
            if (s.expired()) timeout();
        }
        probe.cpuPause();
    }
}

fn nextDeadline(deadline: u64, now: u64) u64 {
    const next = deadline +% probe.interval_ticks;
    if (next <= now or next - now > probe.interval_ticks) return now + probe.interval_ticks;
    return next;
}
