//! SHA-256 of a byte buffer (Zig's std implementation). ferry hashes the kernel image for the
//! migration configuration check with it: WebCrypto (`crypto.subtle.digest`) would page in ~2 MiB
//! of Deno's crypto code for one hash at start.
const std = @import("std");

/// Writes the SHA-256 of `len` bytes at `ptr` to `out[0..32]`.
export fn ferry_sha256(ptr: [*]const u8, len: u64, out: *[32]u8) void {
    std.crypto.hash.sha2.Sha256.hash(ptr[0..@intCast(len)], out, .{});
}

test "ferry_sha256 gives the standard digest of abc" {
    var out: [32]u8 = undefined;
    ferry_sha256("abc", 3, &out);
    var hex: [64]u8 = undefined;
    _ = try std.fmt.bufPrint(&hex, "{s}", .{std.fmt.fmtSliceHexLower(&out)});
    try std.testing.expectEqualStrings("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", &hex);
}
