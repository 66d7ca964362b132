import assert from "node:assert/strict";
import { assertMigratable } from "../devices/_testing.ts";
import { ABI } from "../ffi/abi.ts";
import { VcpuMigratable, type VcpuState } from "./vcpu_state.ts";
import { VmKernelMigratable, type VmKernelState } from "./vm_kernel_state.ts";

// KVM's own round trip is covered by tests/vm_state_test.ts; these check the section contract
// (validation, versions, names) over an in-memory store.
function vcpuStore(): VcpuState {
  return {
    regs: new Uint8Array(ABI.kvm_regs),
    sregs: new Uint8Array(ABI.kvm_sregs),
    fpu: new Uint8Array(ABI.kvm_fpu),
    xsave: new Uint8Array(ABI.kvm_xsave),
    xcrs: new Uint8Array(ABI.kvm_xcrs),
    debugregs: new Uint8Array(ABI.kvm_debugregs),
    lapic: new Uint8Array(ABI.kvm_lapic_state),
    events: new Uint8Array(ABI.kvm_vcpu_events),
    mpState: 0,
    msrs: [{ index: 0x10, value: 0n }],
  };
}

function makeVcpu(): VcpuMigratable {
  let s = vcpuStore();
  return new VcpuMigratable(0, { save: () => s, restore: (n) => s = n });
}

Deno.test("VcpuMigratable round-trips every vCPU item and names a bad field", () => {
  assertMigratable({
    make: makeVcpu,
    mutate: (v) => {
      const s = vcpuStore();
      s.regs[ABI["kvm_regs.rip"]] = 0x42;
      s.mpState = 3;
      s.msrs = [{ index: 0x4b564d10, value: 0x4401n }, { index: 0xc0000080, value: 0xd01n }];
      v.restore(
        { ...(new VcpuMigratable(0, { save: () => s, restore: () => {} }).save() as object) },
        1,
      );
    },
    invalid: [
      { field: "regs", value: new Uint8Array(ABI.kvm_regs - 1) },
      { field: "mpState", value: 11 },
      { field: "msrs", value: [[0x10]] },
      { field: "msrs", value: [[0x10, -1]] },
      { field: "msrs", value: [[2 ** 32, 0]] },
      { field: "msrs", value: [[0x10, 1n << 64n]] },
    ],
  });
});

Deno.test("VcpuMigratable keeps MSR values above 2^53 exact", () => {
  const v = makeVcpu();
  const s = vcpuStore();
  s.msrs = [{ index: 0x6e0, value: 0xffff_ffff_ffff_fff0n }];
  v.restore(new VcpuMigratable(1, { save: () => s, restore: () => {} }).save(), 1);
  const saved = v.save() as { msrs: [number, bigint][] };
  assert.deepEqual(saved.msrs, [[0x6e0, 0xffff_ffff_ffff_fff0n]]);
  assert.equal(v.id, "vcpu:0");
});

function kernelStore(): VmKernelState {
  return {
    irqchips: [0, 1, 2].map(() => new Uint8Array(520)),
    pit: new Uint8Array(ABI.kvm_pit_state2),
    clock: new Uint8Array(ABI.kvm_clock_data),
  };
}

Deno.test("VmKernelMigratable round-trips PIC, IOAPIC, PIT and clock and names a bad field", () => {
  assertMigratable({
    make: () => {
      let s = kernelStore();
      return new VmKernelMigratable({ save: () => s, restore: (n) => s = n });
    },
    mutate: (k) => {
      const s = kernelStore();
      s.irqchips[2]![0] = 7;
      s.clock[0] = 1;
      k.restore({ irqchips: s.irqchips, pit: s.pit, clock: s.clock }, 1);
    },
    invalid: [
      { field: "irqchips", value: [new Uint8Array(520), new Uint8Array(520)] },
      { field: "irqchips", value: [new Uint8Array(520), new Uint8Array(520), new Uint8Array(519)] },
      { field: "pit", value: new Uint8Array(ABI.kvm_pit_state2 + 1) },
    ],
  });
});
