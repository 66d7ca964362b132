/**
 * The VM-wide state KVM holds in the kernel, as one {@linkcode Migratable} with id `vm:kernel`:
 *
 * | field      | what                                                        | size                    |
 * |------------|-------------------------------------------------------------|-------------------------|
 * | `irqchips` | PIC master, PIC slave, IOAPIC, each a raw `kvm_irqchip`     | 3 × 520                 |
 * | `pit`      | `kvm_pit_state2`                                            | 112 (`ffi/abi.ts`)      |
 * | `clock`    | `kvm_clock_data` (kvmclock; `KVM_CLOCK_REALTIME` when known) | 48 (`ffi/abi.ts`)       |
 *
 * Restore it before the vCPUs: a LAPIC is restored after the irqchip.
 * @module
 */
import type { Migratable, StateValue } from "../devices/device.ts";
import { checkStateVersion, StateReader } from "../devices/state_fields.ts";
import { ABI, KVM_IRQCHIP_SIZE } from "../ffi/abi.ts";

/** Version written with the `vm:kernel` section. */
export const VM_KERNEL_STATE_VERSION = 1;
/** Oldest `vm:kernel` version this ferry reads. */
export const VM_KERNEL_STATE_MIN_VERSION = 1;
const ID = "vm:kernel";

/** VM-wide kernel state: PIC master/slave, IOAPIC, PIT, kvmclock. */
export interface VmKernelState {
  irqchips: Uint8Array[];
  pit: Uint8Array;
  clock: Uint8Array;
}

/** Reads and writes the kernel state of a VM; the machine supplies it. */
export interface VmKernelStateAccess {
  save(): VmKernelState;
  restore(state: VmKernelState): void;
}

/**
 * Validates an untrusted `vm:kernel` payload; every error names the field.
 * @throws {TypeError | RangeError} naming the field
 */
export function decodeVmKernelState(state: StateValue): VmKernelState {
  const r = new StateReader(ID, state);
  const chips = r.list("irqchips", 3);
  if (chips.length !== 3) {
    throw new RangeError(`Cannot restore ${ID}: field 'irqchips' must list 3 chips (got ${chips.length})`);
  }
  return {
    irqchips: chips.map((c, i) => {
      if (!(c instanceof Uint8Array) || c.length !== KVM_IRQCHIP_SIZE) {
        throw new TypeError(
          `Cannot restore ${ID}: field 'irqchips' item ${i} must be ${KVM_IRQCHIP_SIZE} bytes`,
        );
      }
      return c;
    }),
    pit: r.bytes("pit", ABI.kvm_pit_state2, ABI.kvm_pit_state2),
    clock: r.bytes("clock", ABI.kvm_clock_data, ABI.kvm_clock_data),
  };
}

/** The VM's kernel state as a {@linkcode Migratable} (`vm:kernel`). */
export class VmKernelMigratable implements Migratable {
  readonly id = ID;
  readonly stateVersion = VM_KERNEL_STATE_VERSION;
  readonly minStateVersion = VM_KERNEL_STATE_MIN_VERSION;
  readonly #access: VmKernelStateAccess;

  constructor(access: VmKernelStateAccess) {
    this.#access = access;
  }

  save(): StateValue {
    const s = this.#access.save();
    return { irqchips: s.irqchips, pit: s.pit, clock: s.clock };
  }

  restore(state: StateValue, version: number): void {
    checkStateVersion(this.id, version, this.minStateVersion, this.stateVersion);
    this.#access.restore(decodeVmKernelState(state));
  }
}
