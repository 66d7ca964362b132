//! CRC32C (Castagnoli) over a byte buffer, and a copy that computes it in the same pass. No
//! policy: the caller decides what to checksum and how to combine results.
//!
//! With SSE4.2 (the shim is built for the native CPU) the `crc32` instruction runs three
//! independent streams over three adjacent blocks (its latency is 3 cycles, its throughput 1 a
//! cycle), and PCLMULQDQ shifts the first two results past the blocks that follow them to combine
//! the three. Without SSE4.2 a portable table-driven loop computes the same values.
const std = @import("std");
const builtin = @import("builtin");

const is_x86_64 = builtin.cpu.arch == .x86_64;
const has_crc32 = is_x86_64 and std.Target.x86.featureSetHas(builtin.cpu.features, .sse4_2);
const has_pclmul = has_crc32 and std.Target.x86.featureSetHas(builtin.cpu.features, .pclmul);

/// CRC32C of `len` bytes at `ptr`, continuing `crc` (0 to start): `ferry_crc32c(b, n, 0)` is the
/// standard CRC32C (0xE3069283 for "123456789"), and passing a previous result continues it, so
/// `crc(a ++ b) == ferry_crc32c(b, ferry_crc32c(a, 0))`.
export fn ferry_crc32c(ptr: [*]const u8, len: u64, crc: u32) u32 {
    return run(false, undefined, ptr, @intCast(len), crc);
}

/// Copies `len` bytes from `src` to `dst` (not overlapping) and returns their CRC32C continuing
/// `crc`, in one pass: the checksum is of exactly the bytes written to `dst`, even when `src`
/// changes meanwhile (guest RAM under running vCPUs).
export fn ferry_copy_crc32c(dst: [*]u8, src: [*]const u8, len: u64, crc: u32) u32 {
    return run(true, dst, src, @intCast(len), crc);
}

/// Per-page CRC32C of `pages` 4 KiB pages at `src` into `out[0..pages]` (each from 0), and the
/// CRC32C of all of them continuing `crc` as the return value, in one pass over the bytes.
export fn ferry_crc32c_pages(src: [*]const u8, pages: u64, out: [*]u32, crc: u32) u32 {
    return runPages(false, undefined, src, @intCast(pages), out, crc);
}

/// {@link ferry_copy_crc32c} with per-page CRC32Cs as {@link ferry_crc32c_pages} gives them.
export fn ferry_copy_crc32c_pages(dst: [*]u8, src: [*]const u8, pages: u64, out: [*]u32, crc: u32) u32 {
    return runPages(true, dst, src, @intCast(pages), out, crc);
}

const PAGE = 4096;

fn runPages(comptime copy: bool, dst: [*]u8, src: [*]const u8, pages: usize, out: [*]u32, crc: u32) u32 {
    var c = crc;
    for (0..pages) |p| {
        const pc = run(copy, if (copy) dst + p * PAGE else undefined, src + p * PAGE, PAGE, 0);
        out[p] = pc;
        // crc(a ++ b) = crc(a)·x^(8·|b|) mod P  xor  crc(b)
        c = shiftBy(PAGE, c) ^ pc;
    }
    return c;
}

/// `c`·x^(8n) mod P: the CRC32C value `c` followed by n zero bytes' worth of shift.
fn shiftBy(comptime n: usize, c: u32) u32 {
    if (has_pclmul) return @truncate(shift(c, comptime xPowMod(8 * n - 33)));
    return mulMod(c, comptime xPowMod(8 * n));
}

/// a·b mod P for bit-reflected polynomials (bit 31 is x^0, so mulMod(a, 0x8000_0000) == a).
fn mulMod(a: u32, b: u32) u32 {
    var r: u32 = 0;
    var x = a;
    var m: u32 = 0x8000_0000;
    while (m != 0) : (m >>= 1) {
        if (b & m != 0) r ^= x;
        x = (x >> 1) ^ (if (x & 1 != 0) @as(u32, 0x82F6_3B78) else 0);
    }
    return r;
}

/// Which implementation this build uses: 2 = crc32 ×3 + PCLMULQDQ, 1 = crc32, 0 = portable.
export fn ferry_crc32c_impl() u32 {
    return if (has_pclmul) 2 else if (has_crc32) 1 else 0;
}

fn run(comptime copy: bool, dst: [*]u8, src: [*]const u8, len: usize, crc: u32) u32 {
    if (!has_crc32) {
        if (copy) @memcpy(dst[0..len], src[0..len]);
        return portable(src[0..len], crc);
    }
    var c: u64 = ~crc;
    var i: usize = 0;
    if (has_pclmul) {
        // Big blocks for throughput, smaller ones so that a 4 KiB page is mostly three-way too.
        inline for (.{ 4096, 1360, 256 }) |block| {
            while (i + 3 * block <= len) : (i += 3 * block) {
                c = threeWay(copy, block, dst + i, src + i, c);
            }
        }
    }
    while (i + 8 <= len) : (i += 8) {
        const w = load(src + i);
        if (copy) store(dst + i, w);
        c = crcWord(c, w);
    }
    var c32: u32 = @truncate(c);
    while (i < len) : (i += 1) {
        const b = src[i];
        if (copy) dst[i] = b;
        c32 = asm ("crc32b %[b], %[c]"
            : [c] "=r" (-> u32),
            : [b] "r" (b),
              [_] "0" (c32),
        );
    }
    return ~c32;
}

/// CRC state after three blocks of `block` bytes at `src`, from state `c` (not inverted).
inline fn threeWay(comptime copy: bool, comptime block: usize, dst: [*]u8, src: [*]const u8, c: u64) u64 {
    var c0 = c;
    var c1: u64 = 0;
    var c2: u64 = 0;
    var j: usize = 0;
    while (j < block) : (j += 8) {
        const a = load(src + j);
        const b = load(src + block + j);
        const d = load(src + 2 * block + j);
        if (copy) {
            store(dst + j, a);
            store(dst + block + j, b);
            store(dst + 2 * block + j, d);
        }
        c0 = crcWord(c0, a);
        c1 = crcWord(c1, b);
        c2 = crcWord(c2, d);
    }
    const k1 = comptime xPowMod(8 * block - 33);
    const k2 = comptime xPowMod(8 * 2 * block - 33);
    return shift(c0, k2) ^ shift(c1, k1) ^ c2;
}

inline fn load(p: [*]const u8) u64 {
    return std.mem.readInt(u64, p[0..8], .little);
}

inline fn store(p: [*]u8, w: u64) void {
    std.mem.writeInt(u64, p[0..8], w, .little);
}

inline fn crcWord(c: u64, w: u64) u64 {
    return asm ("crc32q %[w], %[c]"
        : [c] "=r" (-> u64),
        : [w] "r" (w),
          [_] "0" (c),
    );
}

/// `c` (a raw CRC state) followed by n zero bytes, where `k` = x^(8n-33) mod P: the carry-less
/// product is c·k·x (bit-reflected), and `crc32` of it multiplies by x^32 and reduces mod P.
inline fn shift(c: u64, k: u32) u64 {
    const a: @Vector(2, u64) = .{ c & 0xffff_ffff, 0 };
    const b: @Vector(2, u64) = .{ k, 0 };
    const p = asm ("pclmulqdq $0x00, %[b], %[a]"
        : [a] "=x" (-> @Vector(2, u64)),
        : [_] "0" (a),
          [b] "x" (b),
    );
    return crcWord(0, p[0]);
}

/// x^e mod P in bit-reflected form (bit 31 is x^0), P the Castagnoli polynomial.
fn xPowMod(comptime e: usize) u32 {
    @setEvalBranchQuota(10 * e + 1000);
    var v: u32 = 0x8000_0000;
    for (0..e) |_| v = (v >> 1) ^ (if (v & 1 != 0) @as(u32, 0x82F6_3B78) else 0);
    return v;
}

fn portable(b: []const u8, crc: u32) u32 {
    var h = std.hash.crc.Crc32Iscsi.init();
    h.crc = ~crc;
    h.update(b);
    return h.final();
}

test "ferry_crc32c check value and continuation" {
    const s = "123456789";
    try std.testing.expectEqual(@as(u32, 0xE3069283), ferry_crc32c(s.ptr, s.len, 0));
    const a = ferry_crc32c(s.ptr, 4, 0);
    try std.testing.expectEqual(@as(u32, 0xE3069283), ferry_crc32c(s.ptr + 4, s.len - 4, a));
    try std.testing.expectEqual(@as(u32, 0), ferry_crc32c(s.ptr, 0, 0));
    try std.testing.expectEqual(@as(u32, 0xE3069283), portable(s, 0));
    try std.testing.expectEqual(@as(u32, 0xE3069283), portable(s[4..], portable(s[0..4], 0)));
}

test "ferry_crc32c_pages and ferry_copy_crc32c_pages give per-page CRCs and the CRC of all pages" {
    var buf: [5 * PAGE + 3]u8 = undefined;
    for (&buf, 0..) |*b, k| b.* = @truncate(k *% 2654435761 >> 13);
    var dst: [buf.len]u8 = undefined;
    var crcs: [5]u32 = undefined;
    const want = portable(buf[1 .. 1 + 5 * PAGE], 0x77);
    try std.testing.expectEqual(want, ferry_crc32c_pages(buf[1..].ptr, 5, &crcs, 0x77));
    for (0..5) |p| try std.testing.expectEqual(portable(buf[1 + p * PAGE .. 1 + (p + 1) * PAGE], 0), crcs[p]);
    @memset(&crcs, 0);
    try std.testing.expectEqual(want, ferry_copy_crc32c_pages(dst[2..].ptr, buf[1..].ptr, 5, &crcs, 0x77));
    try std.testing.expectEqualSlices(u8, buf[1 .. 1 + 5 * PAGE], dst[2 .. 2 + 5 * PAGE]);
    try std.testing.expectEqual(portable(buf[1 + 4 * PAGE .. 1 + 5 * PAGE], 0), crcs[4]);
    // The portable shift agrees with the PCLMULQDQ one.
    try std.testing.expectEqual(portable(buf[0 .. 2 * PAGE], 5), mulMod(portable(buf[0..PAGE], 5), comptime xPowMod(8 * PAGE)) ^ portable(buf[PAGE .. 2 * PAGE], 0));
}

test "ferry_crc32c and ferry_copy_crc32c equal the portable CRC at every length and offset" {
    var buf: [3 * 4096 * 2 + 300]u8 = undefined;
    var x: u32 = 0x12345678;
    for (&buf) |*b| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        b.* = @truncate(x);
    }
    var dst: [buf.len]u8 = undefined;
    const lens = [_]usize{ 0, 1, 7, 8, 9, 255, 767, 768, 769, 4080, 4095, 4096, 4097, 3 * 1360, 12287, 12288, 12289, 3 * 4096 * 2, buf.len - 3 };
    for (lens) |n| {
        for ([_]usize{ 0, 1, 3 }) |off| {
            const want = portable(buf[off .. off + n], 0xdeadbeef);
            try std.testing.expectEqual(want, ferry_crc32c(buf[off..].ptr, n, 0xdeadbeef));
            @memset(&dst, 0);
            try std.testing.expectEqual(want, ferry_copy_crc32c(dst[off..].ptr, buf[off..].ptr, n, 0xdeadbeef));
            try std.testing.expectEqualSlices(u8, buf[off .. off + n], dst[off .. off + n]);
        }
    }
    try std.testing.expectEqual(std.hash.crc.Crc32Iscsi.hash(&buf), ferry_crc32c(&buf, buf.len, 0));
}
