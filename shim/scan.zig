//! Migration data path (issue 9): page scanning without a JavaScript per-page loop. Classifies
//! 4 KiB pages as zero or not with wide loads and coalesces them into runs. No policy: the caller
//! chooses which pages (all, or a dirty bitmap), how many runs and raw pages fit in a message.
const std = @import("std");

const PAGE: usize = 4096;
const V = @Vector(4, u64);

/// True when the 4 KiB page at `p` is all zero (any alignment). The first 64 bytes are checked
/// first: a page with data almost always ends the scan there.
fn pageIsZero(p: [*]const u8) bool {
    const q: [*]align(1) const V = @ptrCast(p);
    if (@reduce(.Or, q[0] | q[1]) != 0) return false;
    var i: usize = 2;
    while (i < PAGE / 32) : (i += 8) {
        const acc = q[i] | q[i + 1] | q[i + 2] | q[i + 3] | q[i + 4] | q[i + 5] |
            (if (i + 6 < PAGE / 32) q[i + 6] else @as(V, @splat(0))) |
            (if (i + 7 < PAGE / 32) q[i + 7] else @as(V, @splat(0)));
        if (@reduce(.Or, acc) != 0) return false;
    }
    return true;
}

/// Scans pages `[first, end)` of the memory at `base` (page `p` is at `base + p * 4096`):
/// every page when `bitmap` is null, else only pages whose bit is set (bit `p & 31` of word
/// `p >> 5`). A page whose byte in `resident` (one per page, indexed from 0; may be null) has bit
/// 0 clear was never backed by the host and counts as zero without being read.
///
/// Consecutive visited pages of the same kind are coalesced into runs, written to `out` as u32
/// triples (first page, page count, 1 when zero else 0). Stops before a new run would exceed
/// `max_runs`, before the non-zero pages would exceed `max_raw`, or once `max_visit` pages were
/// visited. Returns the number of runs; `next[0]` = the page to continue from (`end` when done).
export fn ferry_scan_runs(
    base: [*]const u8,
    bitmap: ?[*]const u32,
    resident: ?[*]const u8,
    first: u32,
    end: u32,
    out: [*]u32,
    max_runs: u32,
    max_raw: u32,
    max_visit: u32,
    next: *u32,
) i64 {
    var runs: u32 = 0;
    var raw: u32 = 0;
    var visited: u32 = 0;
    var p: u32 = first;
    var last_end: u32 = 0; // one past the last page of the current run
    var last_zero = false;
    while (p < end) {
        if (bitmap) |bm| {
            const w = bm[p >> 5] >> @intCast(p & 31);
            if (w == 0) {
                p = (p | 31) +% 1;
                if (p == 0) break; // wrapped past u32
                continue;
            }
            p += @ctz(w);
            if (p >= end) break;
        }
        if (visited >= max_visit) break;
        const zero = if (resident) |r| (r[p] & 1) == 0 or pageIsZero(base + @as(usize, p) * PAGE) else pageIsZero(base + @as(usize, p) * PAGE);
        if (!zero and raw >= max_raw) break;
        if (runs > 0 and last_end == p and last_zero == zero) {
            out[(runs - 1) * 3 + 1] += 1;
        } else {
            if (runs >= max_runs) break;
            out[runs * 3] = p;
            out[runs * 3 + 1] = 1;
            out[runs * 3 + 2] = @intFromBool(zero);
            runs += 1;
        }
        last_end = p + 1;
        last_zero = zero;
        if (!zero) raw += 1;
        visited += 1;
        p += 1;
    }
    next.* = @min(p, end);
    return runs;
}

test "scan: all pages, zero and raw runs, limits" {
    var mem: [8 * PAGE]u8 align(4096) = [_]u8{0} ** (8 * PAGE);
    mem[2 * PAGE + 4095] = 1; // page 2: last byte only
    mem[3 * PAGE] = 7;
    mem[6 * PAGE + 100] = 9;
    var out: [30]u32 = undefined;
    var next: u32 = 0;
    const n = ferry_scan_runs(&mem, null, null, 0, 8, &out, 10, 100, 100, &next);
    try std.testing.expectEqual(@as(i64, 5), n);
    try std.testing.expectEqualSlices(u32, &.{ 0, 2, 1, 2, 2, 0, 4, 2, 1, 6, 1, 0, 7, 1, 1 }, out[0..15]);
    try std.testing.expectEqual(@as(u32, 8), next);
    // max_raw 1: stops before page 3.
    const m = ferry_scan_runs(&mem, null, null, 0, 8, &out, 10, 1, 100, &next);
    try std.testing.expectEqual(@as(i64, 2), m);
    try std.testing.expectEqual(@as(u32, 3), next);
    // max_runs 1.
    _ = ferry_scan_runs(&mem, null, null, 0, 8, &out, 1, 100, 100, &next);
    try std.testing.expectEqual(@as(u32, 2), next);
    // max_visit 5.
    _ = ferry_scan_runs(&mem, null, null, 1, 8, &out, 10, 100, 5, &next);
    try std.testing.expectEqual(@as(u32, 6), next);
}

test "scan: bitmap and residency" {
    var mem: [70 * PAGE]u8 align(4096) = [_]u8{0} ** (70 * PAGE);
    mem[33 * PAGE + 5] = 1;
    mem[34 * PAGE + 5] = 1;
    mem[65 * PAGE + 5] = 1;
    const bm = [_]u32{ 0x1, 0x6, 0x3 }; // pages 0, 33, 34, 64, 65
    var out: [30]u32 = undefined;
    var next: u32 = 0;
    const n = ferry_scan_runs(&mem, &bm, null, 0, 70, &out, 10, 100, 100, &next);
    try std.testing.expectEqual(@as(i64, 4), n);
    try std.testing.expectEqualSlices(u32, &.{ 0, 1, 1, 33, 2, 0, 64, 1, 1, 65, 1, 0 }, out[0..12]);
    try std.testing.expectEqual(@as(u32, 70), next);
    var res = [_]u8{1} ** 70;
    res[65] = 0; // never backed: zero without reading
    _ = ferry_scan_runs(&mem, &bm, &res, 60, 70, &out, 10, 100, 100, &next);
    try std.testing.expectEqualSlices(u32, &.{ 64, 2, 1 }, out[0..3]);
}
