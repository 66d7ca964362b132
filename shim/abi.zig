//! Sizes and offsets of the kernel structs that TypeScript reads and writes through DataViews.
//! Taken from the kernel's own `linux/kvm.h` (Zig's bundled uapi headers), so `src/ffi/abi.ts`
//! is checked against the header, not against a second hand-written copy.
const c = @cImport({
    @cInclude("linux/kvm.h");
});

pub const Entry = struct { name: [*:0]const u8, value: i64 };

fn size(comptime T: type, comptime name: [:0]const u8) Entry {
    return .{ .name = name, .value = @sizeOf(T) };
}

fn off(comptime T: type, comptime field: []const u8, comptime name: [:0]const u8) Entry {
    return .{ .name = name, .value = @offsetOf(T, field) };
}

const Run = c.struct_kvm_run;

/// The whole table: the KVM structs, then the userfaultfd ones (uffd.zig).
pub const table = kvm_table ++ @import("uffd.zig").abi_entries;

const kvm_table = [_]Entry{
    off(Run, "immediate_exit", "kvm_run.immediate_exit"),
    off(Run, "exit_reason", "kvm_run.exit_reason"),
    // The exit union starts at offset 32 for every exit kind.
    .{ .name = "kvm_run.exit_union", .value = 32 },
    size(c.struct_kvm_regs, "kvm_regs"),
    off(c.struct_kvm_regs, "rip", "kvm_regs.rip"),
    off(c.struct_kvm_regs, "rflags", "kvm_regs.rflags"),
    size(c.struct_kvm_sregs, "kvm_sregs"),
    off(c.struct_kvm_sregs, "cs", "kvm_sregs.cs"),
    off(c.struct_kvm_sregs, "tr", "kvm_sregs.tr"),
    off(c.struct_kvm_sregs, "ldt", "kvm_sregs.ldt"),
    off(c.struct_kvm_sregs, "gdt", "kvm_sregs.gdt"),
    off(c.struct_kvm_sregs, "idt", "kvm_sregs.idt"),
    off(c.struct_kvm_sregs, "cr0", "kvm_sregs.cr0"),
    off(c.struct_kvm_sregs, "cr3", "kvm_sregs.cr3"),
    off(c.struct_kvm_sregs, "cr4", "kvm_sregs.cr4"),
    off(c.struct_kvm_sregs, "efer", "kvm_sregs.efer"),
    off(c.struct_kvm_sregs, "apic_base", "kvm_sregs.apic_base"),
    size(c.struct_kvm_segment, "kvm_segment"),
    off(c.struct_kvm_segment, "selector", "kvm_segment.selector"),
    off(c.struct_kvm_segment, "type", "kvm_segment.type"),
    off(c.struct_kvm_segment, "unusable", "kvm_segment.unusable"),
    size(c.struct_kvm_fpu, "kvm_fpu"),
    size(c.struct_kvm_xsave, "kvm_xsave"),
    size(c.struct_kvm_xcrs, "kvm_xcrs"),
    size(c.struct_kvm_debugregs, "kvm_debugregs"),
    size(c.struct_kvm_lapic_state, "kvm_lapic_state"),
    size(c.struct_kvm_mp_state, "kvm_mp_state"),
    size(c.struct_kvm_vcpu_events, "kvm_vcpu_events"),
    size(c.struct_kvm_clock_data, "kvm_clock_data"),
    off(c.struct_kvm_clock_data, "flags", "kvm_clock_data.flags"),
    off(c.struct_kvm_clock_data, "realtime", "kvm_clock_data.realtime"),
    size(c.struct_kvm_pit_state2, "kvm_pit_state2"),
    size(c.struct_kvm_userspace_memory_region, "kvm_userspace_memory_region"),
    size(c.struct_kvm_dirty_log, "kvm_dirty_log"),
    size(c.struct_kvm_msr_entry, "kvm_msr_entry"),
    size(c.struct_kvm_msrs, "kvm_msrs"),
    size(c.struct_kvm_cpuid_entry2, "kvm_cpuid_entry2"),
    size(c.struct_kvm_cpuid2, "kvm_cpuid2"),
    size(c.struct_kvm_irqfd, "kvm_irqfd"),
    size(c.struct_kvm_ioeventfd, "kvm_ioeventfd"),
    size(c.struct_kvm_msi, "kvm_msi"),
    size(c.struct_kvm_irq_routing_entry, "kvm_irq_routing_entry"),
    size(c.struct_kvm_enable_cap, "kvm_enable_cap"),
    size(c.struct_kvm_irq_level, "kvm_irq_level"),
};

test "abi sizes match the numbers the kernel documents" {
    const std = @import("std");
    try std.testing.expectEqual(@as(usize, 144), @sizeOf(c.struct_kvm_regs));
    try std.testing.expectEqual(@as(usize, 312), @sizeOf(c.struct_kvm_sregs));
    try std.testing.expectEqual(@as(usize, 24), @sizeOf(c.struct_kvm_segment));
    try std.testing.expectEqual(@as(usize, 1024), @sizeOf(c.struct_kvm_lapic_state));
    try std.testing.expectEqual(@as(usize, 32), @offsetOf(Run, "exit_reason") + 24);
}
