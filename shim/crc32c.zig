//! CRC32C (Castagnoli) over a byte buffer, and a copy that computes it in the same pass. No
//! policy: the caller decides what to checksum and how to combine results.
//!
//! With SSE4.2 (the shim is built for the native CPU) the `crc32` instruction runs three
//! independent streams over three adjacent blocks (its latency is 3 cycles, its throughput 1 a
//! cycle), and PCLMULQDQ shifts the first two results past the blocks that follow them to combine
//! the three. With VPCLMULQDQ and AVX2 too (Zen 3 and later, Ice Lake and later) each 4 KiB
//! chunk is split between 256-bit carry-less folding and three `crc32` streams that run side by
//! side on different execution units (`hybrid`); shorter tails take the three-way path. Without
//! SSE4.2 a portable table-driven loop computes the same values.
const std = @import("std");
const builtin = @import("builtin");

const is_x86_64 = builtin.cpu.arch == .x86_64;
const has_crc32 = is_x86_64 and std.Target.x86.featureSetHas(builtin.cpu.features, .sse4_2);
const has_pclmul = has_crc32 and std.Target.x86.featureSetHas(builtin.cpu.features, .pclmul);
const has_avx = has_pclmul and std.Target.x86.featureSetHas(builtin.cpu.features, .avx);
const has_vpclmul = has_avx and std.Target.x86.featureSetHas(builtin.cpu.features, .vpclmulqdq) and
    std.Target.x86.featureSetHas(builtin.cpu.features, .avx2);

/// CRC32C of `len` bytes at `ptr`, continuing `crc` (0 to start): `ferry_crc32c(b, n, 0)` is the
/// standard CRC32C (0xE3069283 for "123456789"), and passing a previous result continues it, so
/// `crc(a ++ b) == ferry_crc32c(b, ferry_crc32c(a, 0))`.
pub export fn ferry_crc32c(ptr: [*]const u8, len: u64, crc: u32) u32 {
    return run(false, undefined, ptr, @intCast(len), crc);
}

/// Copies `len` bytes from `src` to `dst` (not overlapping) and returns their CRC32C continuing
/// `crc`, in one pass: the checksum is of exactly the bytes written to `dst`, even when `src`
/// changes meanwhile (guest RAM under running vCPUs).
pub export fn ferry_copy_crc32c(dst: [*]u8, src: [*]const u8, len: u64, crc: u32) u32 {
    return run(true, dst, src, @intCast(len), crc);
}

/// Per-page CRC32C of `pages` 4 KiB pages at `src` into `out[0..pages]` (each from 0), and the
/// CRC32C of all of them continuing `crc` as the return value, in one pass over the bytes.
pub export fn ferry_crc32c_pages(src: [*]const u8, pages: u64, out: [*]u32, crc: u32) u32 {
    return runPages(false, undefined, src, @intCast(pages), out, crc);
}

/// {@link ferry_copy_crc32c} with per-page CRC32Cs as {@link ferry_crc32c_pages} gives them.
pub export fn ferry_copy_crc32c_pages(dst: [*]u8, src: [*]const u8, pages: u64, out: [*]u32, crc: u32) u32 {
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

/// Which implementation this build uses: 3 = VPCLMULQDQ folding (256-bit lanes), 2 = crc32 ×3 +
/// PCLMULQDQ, 1 = crc32, 0 = portable.
pub export fn ferry_crc32c_impl() u32 {
    return if (has_vpclmul) 3 else if (has_pclmul) 2 else if (has_crc32) 1 else 0;
}

fn run(comptime copy: bool, dst: [*]u8, src: [*]const u8, len: usize, crc: u32) u32 {
    if (!has_crc32) {
        if (copy) @memcpy(dst[0..len], src[0..len]);
        return portable(src[0..len], crc);
    }
    var c: u64 = ~crc;
    var i: usize = 0;
    if (has_vpclmul) {
        while (i + hybrid_chunk <= len) : (i += hybrid_chunk) {
            c = hybrid(copy, dst + i, src + i, c);
        }
    }
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

/// Hybrid: `crc32q` and 256-bit VPCLMULQDQ folding run side by side on different parts of the
/// buffer (different execution units; on Zen 3 either alone does about 8 bytes a cycle). Each step
/// folds `hybrid_ymm` 32-byte blocks and feeds `hybrid_words` words to each of three `crc32q`
/// streams; after n steps the fold region [0, F) is followed by the three stream regions of
/// B bytes each, and the four states are combined by `shift`.
///
/// Folding (Intel's "Fast CRC Computation Using PCLMULQDQ", bit-reflected): an accumulator holds
/// 128-bit blocks of the message; a block A followed by D bits is replaced by a congruent one:
/// A = L·x^64 + H (L the low quadword, the first bytes), so A·x^D ≡ L·(x^(D+64) mod P) +
/// H·(x^D mod P), two 64×32-bit carry-less products. As in `shift`, the constants are x^(e-33)
/// so that the 95-bit products land bit-reflected in 128 bits. The last block V is finished by
/// two `crc32q` (V·x^32 mod P).
const hybrid_ymm = 13;
const hybrid_words = 4;
/// Bytes per step, and per chunk (8 steps: 3328 bytes folded, 3 × 256 by `crc32q`).
const hybrid_step = 32 * hybrid_ymm + 3 * 8 * hybrid_words;
const hybrid_chunk = 4096;
comptime {
    std.debug.assert(hybrid_chunk % hybrid_step == 0);
}

const Y = @Vector(4, u64);
const X = @Vector(2, u64);

/// Fold constants for a distance of `bytes` bytes, in each 128-bit lane.
fn foldK(comptime T: type, comptime bytes: usize) T {
    const lo: u64 = xPowMod(8 * bytes + 64 - 33);
    const hi: u64 = xPowMod(8 * bytes - 33);
    return if (T == Y) .{ lo, hi, lo, hi } else .{ lo, hi };
}

inline fn clmulLo(comptime T: type, a: T, k: T) T {
    return asm ("vpclmulqdq $0x00, %[k], %[a], %[r]"
        : [r] "=x" (-> T),
        : [a] "x" (a),
          [k] "x" (k),
    );
}

inline fn clmulHi(comptime T: type, a: T, k: T) T {
    return asm ("vpclmulqdq $0x11, %[k], %[a], %[r]"
        : [r] "=x" (-> T),
        : [a] "x" (a),
          [k] "x" (k),
    );
}

/// `a` moved forward by the distance of `k` (see `foldK`), not yet combined with the data there.
inline fn advance(comptime T: type, a: T, k: T) T {
    return clmulLo(T, a, k) ^ clmulHi(T, a, k);
}

inline fn loadT(comptime T: type, p: [*]const u8) T {
    return @as(*align(1) const T, @ptrCast(p)).*;
}

inline fn storeT(comptime T: type, p: [*]u8, v: T) void {
    @as(*align(1) T, @ptrCast(p)).* = v;
}

/// CRC state after `hybrid_chunk` bytes from state `c` (not inverted).
inline fn hybrid(comptime copy: bool, dst: [*]u8, src: [*]const u8, c: u64) u64 {
    const n = hybrid_chunk / hybrid_step;
    const fold_bytes = 32 * hybrid_ymm;
    const f = n * fold_bytes; // the fold region
    const b = n * 8 * hybrid_words; // each crc32q stream's region
    var acc: [hybrid_ymm]Y = undefined;
    inline for (0..hybrid_ymm) |l| {
        acc[l] = loadT(Y, src + 32 * l);
        if (copy) storeT(Y, dst + 32 * l, acc[l]);
    }
    // The initial state is XORed into the first 32 bits of the message.
    acc[0] ^= Y{ c & 0xffff_ffff, 0, 0, 0 };
    var s: [3]u64 = .{ 0, 0, 0 };
    const k_step = comptime foldK(Y, fold_bytes);
    var i: usize = 0; // step
    while (true) {
        inline for (0..hybrid_words) |w| {
            inline for (0..3) |k| {
                const o = f + k * b + (i * hybrid_words + w) * 8;
                const d = load(src + o);
                if (copy) store(dst + o, d);
                s[k] = crcWord(s[k], d);
            }
        }
        i += 1;
        if (i == n) break;
        inline for (0..hybrid_ymm) |l| {
            const o = i * fold_bytes + 32 * l;
            const d = loadT(Y, src + o);
            if (copy) storeT(Y, dst + o, d);
            acc[l] = advance(Y, acc[l], k_step) ^ d;
        }
    }
    // Every accumulator onto the last one, then its first 128-bit block onto its second.
    var r = acc[hybrid_ymm - 1];
    inline for (0..hybrid_ymm - 1) |l| {
        r ^= advance(Y, acc[l], comptime foldK(Y, 32 * (hybrid_ymm - 1 - l)));
    }
    const x: X = advance(X, .{ r[0], r[1] }, comptime foldK(X, 16)) ^ X{ r[2], r[3] };
    const cf = crcWord(crcWord(0, x[0]), x[1]);
    // crc(a ++ b) = crc(a)·x^(8·|b|) xor crc(b), for the raw states too.
    return shift(cf, comptime xPowMod(8 * 3 * b - 33)) ^ shift(s[0], comptime xPowMod(8 * 2 * b - 33)) ^
        shift(s[1], comptime xPowMod(8 * b - 33)) ^ s[2];
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
    // VEX-encoded when AVX is there: a legacy SSE instruction after 256-bit code (dirty upper
    // halves) made the hybrid below 2.5x slower on Zen 3.
    if (has_avx) return crcWord(0, clmulLo(X, a, b)[0]);
    const p = asm ("pclmulqdq $0x00, %[b], %[a]"
        : [a] "=x" (-> @Vector(2, u64)),
        : [_] "0" (a),
          [b] "x" (b),
    );
    return crcWord(0, p[0]);
}

/// x^e mod P in bit-reflected form (bit 31 is x^0), P the Castagnoli polynomial.
fn xPowMod(comptime e: usize) u32 {
    @setEvalBranchQuota(1_000_000);
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

test "every length 0..64 and around the 4 KiB hybrid chunk, at unaligned starts, continuing a non-zero crc" {
    var buf: [4 * PAGE + 64]u8 = undefined;
    var x: u64 = 0x0123_4567_89ab_cdef;
    for (&buf) |*b| {
        x = x *% 6364136223846793005 +% 1442695040888963407;
        b.* = @truncate(x >> 33);
    }
    var dst: [buf.len]u8 = undefined;
    var lens: [65 + 14]usize = undefined;
    for (0..65) |n| lens[n] = n;
    for ([_]usize{ 127, 128, 129, 4095, 4096, 4097, 4096 + 63, 8191, 8192, 8193, 3 * 4096 + 17, 4 * PAGE - 1, 4 * PAGE, 4 * PAGE + 9 }, 65..) |n, k| lens[k] = n;
    for (lens) |n| {
        for (0..8) |off| {
            for ([_]u32{ 0, 0xffff_ffff, 0x1234_5678 }) |crc| {
                const want = portable(buf[off .. off + n], crc);
                try std.testing.expectEqual(want, ferry_crc32c(buf[off..].ptr, n, crc));
                @memset(&dst, 0xaa);
                try std.testing.expectEqual(want, ferry_copy_crc32c(dst[7 - off ..].ptr, buf[off..].ptr, n, crc));
                try std.testing.expectEqualSlices(u8, buf[off .. off + n], dst[7 - off .. 7 - off + n]);
                // Bytes around the copy are left alone.
                if (7 - off > 0) try std.testing.expectEqual(@as(u8, 0xaa), dst[6 - off]);
                try std.testing.expectEqual(@as(u8, 0xaa), dst[7 - off + n]);
            }
        }
    }
}

test "ferry_crc32c_pages: zero pages, exactly one page, many pages at an unaligned start" {
    const n = 19;
    var buf: [n * PAGE + 5]u8 = undefined;
    for (&buf, 0..) |*b, k| b.* = @truncate((k *% 0x9E37_79B9) >> 11);
    var crcs: [n]u32 = undefined;
    var dst: [buf.len]u8 = undefined;
    try std.testing.expectEqual(@as(u32, 0x55), ferry_crc32c_pages(&buf, 0, &crcs, 0x55));
    try std.testing.expectEqual(@as(u32, 0x55), ferry_copy_crc32c_pages(&dst, &buf, 0, &crcs, 0x55));
    for ([_]usize{ 1, n }) |pages| {
        for ([_]usize{ 0, 5 }) |off| {
            const want = portable(buf[off .. off + pages * PAGE], 0xcafe_f00d);
            @memset(&crcs, 0);
            try std.testing.expectEqual(want, ferry_crc32c_pages(buf[off..].ptr, pages, &crcs, 0xcafe_f00d));
            for (0..pages) |p| try std.testing.expectEqual(Crc32c(buf[off + p * PAGE .. off + (p + 1) * PAGE]), crcs[p]);
            @memset(&crcs, 0);
            try std.testing.expectEqual(want, ferry_copy_crc32c_pages(dst[5 - off ..].ptr, buf[off..].ptr, pages, &crcs, 0xcafe_f00d));
            try std.testing.expectEqualSlices(u8, buf[off .. off + pages * PAGE], dst[5 - off .. 5 - off + pages * PAGE]);
            for (0..pages) |p| try std.testing.expectEqual(Crc32c(buf[off + p * PAGE .. off + (p + 1) * PAGE]), crcs[p]);
        }
    }
}

fn Crc32c(b: []const u8) u32 {
    return std.hash.crc.Crc32Iscsi.hash(b);
}

test "ferry_crc32c_impl is the fastest implementation this CPU runs (the shim is built for the native CPU)" {
    if (!is_x86_64) return error.SkipZigTest;
    const l1 = cpuid(1, 0);
    const l7 = cpuid(7, 0);
    const sse42 = l1[2] & (1 << 20) != 0;
    const pclmul = l1[2] & (1 << 1) != 0;
    const avx = l1[2] & (1 << 28) != 0;
    const avx2 = l7[1] & (1 << 5) != 0;
    const vpclmul = l7[2] & (1 << 10) != 0;
    const want: u32 = if (sse42 and pclmul and avx and avx2 and vpclmul) 3 else if (sse42 and pclmul) 2 else if (sse42) 1 else 0;
    try std.testing.expectEqual(want, ferry_crc32c_impl());
}

/// eax, ebx, ecx, edx of CPUID leaf `leaf`, subleaf `sub`.
fn cpuid(leaf: u32, sub: u32) [4]u32 {
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
          [sub] "{ecx}" (sub),
    );
    return .{ a, b, c, d };
}
