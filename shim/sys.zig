//! The shim's two conversions at the syscall boundary, shared by its topic files.

/// A raw `std.os.linux` result as the shim returns it: `>= 0` a value, `-errno` a failure.
pub inline fn ret(r: usize) isize {
    return @bitCast(r);
}

/// A C file descriptor as a raw syscall argument (sign-extended, so -1 stays -1).
pub inline fn ufd(fd: c_int) usize {
    return @bitCast(@as(isize, fd));
}
