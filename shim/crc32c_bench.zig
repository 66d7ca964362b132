//! Microbenchmark of the shim's CRC32C (not part of the shim or its tests):
//!   .tools/zig/ziglang/zig run -O ReleaseSafe shim/crc32c_bench.zig
//! `ferry_crc32c_pages` and `ferry_copy_crc32c_pages` over 1 MiB (in cache, many calls per
//! sample) and 256 MiB (out of cache, one call per sample); medians of interleaved samples, so
//! that a second implementation added to `impls` is measured A/B under the same load.
const std = @import("std");

const impls = .{.{ "shim", @import("crc32c.zig") }};

const PAGE = 4096;
const small = 1 << 20;
const big = 256 << 20;

pub fn main() !void {
    const gpa = std.heap.page_allocator;
    const src = try gpa.alloc(u8, big);
    const dst = try gpa.alloc(u8, big);
    const out = try gpa.alloc(u32, big / PAGE);
    var x: u64 = 0x9E37_79B9_7F4A_7C15;
    for (std.mem.bytesAsSlice(u64, src)) |*w| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.* = x;
    }
    @memset(dst, 1);
    var load_buf: [128]u8 = undefined;
    const load = try std.fs.cwd().readFile("/proc/loadavg", &load_buf);
    std.debug.print("loadavg {s}", .{load});

    const cases = .{
        .{ "pages      1 MiB", false, small, 64, 31 },
        .{ "copy_pages 1 MiB", true, small, 32, 31 },
        .{ "pages    256 MiB", false, big, 1, 9 },
        .{ "copy_pages 256 MiB", true, big, 1, 9 },
    };
    inline for (cases) |cs| {
        const name, const copy, const size, const reps, const samples = cs;
        var ns: [impls.len][samples]u64 = undefined;
        var check: [impls.len]u32 = undefined;
        for (0..samples) |s| {
            inline for (impls, 0..) |im, k| {
                const m = im[1];
                var t = try std.time.Timer.start();
                var r: u32 = 0;
                for (0..reps) |_| {
                    r = if (copy)
                        m.ferry_copy_crc32c_pages(dst.ptr, src.ptr, size / PAGE, out.ptr, r)
                    else
                        m.ferry_crc32c_pages(src.ptr, size / PAGE, out.ptr, r);
                }
                ns[k][s] = t.read();
                check[k] = r;
            }
        }
        inline for (impls, 0..) |im, k| {
            std.mem.sort(u64, &ns[k], {}, std.sort.asc(u64));
            const med: f64 = @floatFromInt(ns[k][samples / 2]);
            const bytes: f64 = @floatFromInt(size * reps);
            std.debug.print("{s:<20} {s:<6} impl {d}  {d:6.2} GB/s  {d:6.1} ns/page  (min {d:6.2} GB/s)  crc {x:0>8}\n", .{
                name,                      im[0],
                im[1].ferry_crc32c_impl(), bytes / med,
                med / (bytes / PAGE),      bytes / @as(f64, @floatFromInt(ns[k][0])),
                check[k],
            });
        }
    }
    const after = try std.fs.cwd().readFile("/proc/loadavg", &load_buf);
    std.debug.print("loadavg {s}", .{after});
}
