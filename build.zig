//! Builds ferry's native parts: the shim (zig-out/lib/libferry_shim.so) and the probe guest
//! (zig-out/guest/probe.elf). `zig build test` runs the shim's ABI tests.
//! Artifacts are created first; steps are attached at the end.
const std = @import("std");

pub fn build(b: *std.Build) void {
    const target = b.standardTargetOptions(.{});
    const optimize = b.standardOptimizeOption(.{});

    // The shim: one root, C ABI, linked against libc only for the kernel uapi headers.
    const shim_mod = b.createModule(.{
        .root_source_file = b.path("shim/shim.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
    });
    const shim = b.addLibrary(.{ .linkage = .dynamic, .name = "ferry_shim", .root_module = shim_mod });
    const shim_tests = b.addTest(.{ .root_module = shim_mod });

    // The probe guest: freestanding x86_64, baseline CPU minus SSE for the Zig code (most of it runs
    // while the PVM still emulates the vCPU, and the emulator cannot execute SSE); entry.S holds the
    // SSE worker loop. Loaded by -kernel (PVH note) or ferry's 64-bit entry.
    var guest_features_sub = std.Target.Cpu.Feature.Set.empty;
    guest_features_sub.addFeature(@intFromEnum(std.Target.x86.Feature.sse));
    guest_features_sub.addFeature(@intFromEnum(std.Target.x86.Feature.sse2));
    guest_features_sub.addFeature(@intFromEnum(std.Target.x86.Feature.mmx));
    var guest_features_add = std.Target.Cpu.Feature.Set.empty;
    guest_features_add.addFeature(@intFromEnum(std.Target.x86.Feature.soft_float));
    const guest_target = b.resolveTargetQuery(.{
        .cpu_arch = .x86_64,
        .os_tag = .freestanding,
        .abi = .none,
        .cpu_model = .{ .explicit = &std.Target.x86.cpu.x86_64 },
        .cpu_features_sub = guest_features_sub,
        .cpu_features_add = guest_features_add,
    });
    const guest_mod = b.createModule(.{
        .root_source_file = b.path("guest/probe.zig"),
        .target = guest_target,
        .optimize = .ReleaseSmall,
        .red_zone = false,
        .code_model = .kernel,
        .single_threaded = false,
        .strip = false,
        .unwind_tables = .none,
    });
    guest_mod.addAssemblyFile(b.path("guest/entry.S"));
    const guest = b.addExecutable(.{ .name = "probe.elf", .root_module = guest_mod });
    guest.setLinkerScript(b.path("guest/probe.ld"));
    guest.entry = .{ .symbol_name = "_start" };

    // Steps.
    b.installArtifact(shim);
    const install_guest = b.addInstallArtifact(guest, .{ .dest_dir = .{ .override = .{ .custom = "guest" } } });
    b.getInstallStep().dependOn(&install_guest.step);
    const test_step = b.step("test", "Run the shim's ABI tests");
    test_step.dependOn(&b.addRunArtifact(shim_tests).step);
}
