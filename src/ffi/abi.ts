/**
 * Sizes and offsets of the kernel structs ferry reads and writes with DataViews. `abi_test.ts`
 * checks every entry against the shim's table, which Zig takes from `linux/kvm.h` itself.
 * @module
 */
export const ABI = {
  "kvm_run.immediate_exit": 1,
  "kvm_run.exit_reason": 8,
  "kvm_run.exit_union": 32,
  "kvm_regs": 144,
  "kvm_regs.rip": 128,
  "kvm_regs.rflags": 136,
  "kvm_sregs": 312,
  "kvm_sregs.cs": 0,
  "kvm_sregs.tr": 144,
  "kvm_sregs.ldt": 168,
  "kvm_sregs.gdt": 192,
  "kvm_sregs.idt": 208,
  "kvm_sregs.cr0": 224,
  "kvm_sregs.cr3": 240,
  "kvm_sregs.cr4": 248,
  "kvm_sregs.efer": 264,
  "kvm_sregs.apic_base": 272,
  "kvm_segment": 24,
  "kvm_segment.selector": 12,
  "kvm_segment.type": 14,
  "kvm_segment.unusable": 22,
  "kvm_fpu": 416,
  "kvm_xsave": 4096,
  "kvm_xcrs": 392,
  "kvm_debugregs": 128,
  "kvm_lapic_state": 1024,
  "kvm_mp_state": 4,
  "kvm_vcpu_events": 64,
  "kvm_clock_data": 48,
  "kvm_clock_data.flags": 8,
  "kvm_clock_data.realtime": 16,
  "kvm_pit_state2": 112,
  "kvm_userspace_memory_region": 32,
  "kvm_dirty_log": 16,
  "kvm_msr_entry": 16,
  "kvm_msrs": 8,
  "kvm_cpuid_entry2": 40,
  "kvm_cpuid2": 8,
  "kvm_irqfd": 32,
  "kvm_ioeventfd": 64,
  "kvm_msi": 32,
  "kvm_irq_routing_entry": 48,
  "kvm_enable_cap": 104,
  "kvm_irq_level": 8,
} as const;

/** Size of `struct kvm_irqchip` (its IOAPIC bitfields keep it out of the Zig table). */
export const KVM_IRQCHIP_SIZE = 520;
