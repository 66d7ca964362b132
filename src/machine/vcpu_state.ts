/**
 * A vCPU's migratable face (STYLE.md c.8): every state item KVM holds for one vCPU, as plain data.
 *
 * | field       | what                                        | size (from `ffi/abi.ts`) |
 * |-------------|---------------------------------------------|--------------------------|
 * | `regs`      | `kvm_regs`                                  | 144                      |
 * | `sregs`     | `kvm_sregs`                                 | 312                      |
 * | `fpu`       | `kvm_fpu`                                   | 416                      |
 * | `xsave`     | `kvm_xsave`                                 | 4096                     |
 * | `xcrs`      | `kvm_xcrs`                                  | 392                      |
 * | `debugregs` | `kvm_debugregs`                             | 128                      |
 * | `lapic`     | `kvm_lapic_state`                           | 1024                     |
 * | `events`    | `kvm_vcpu_events`                           | 64                       |
 * | `mpState`   | `kvm_mp_state.mp_state`                     | integer 0..10            |
 * | `msrs`      | `[index, value]` pairs: the index list + platform MSRs | ≤ 4096 pairs  |
 * @module
 */
import type { Migratable, StateValue } from "../devices/device.ts";
import { checkStateVersion, StateReader } from "../devices/state_fields.ts";
import { ABI } from "../ffi/abi.ts";
import type { MsrValue } from "../kvm/kvm.ts";

/** Version written with every `vcpu:<i>` section. */
export const VCPU_STATE_VERSION = 1;
/** Oldest `vcpu:<i>` version this ferry reads. */
export const VCPU_STATE_MIN_VERSION = 1;
/** Bound on the MSRs one vCPU section may carry. */
const MAX_MSRS = 4096;

/** The state of one vCPU (plain data; raw kernel structs as bytes). */
export interface VcpuState {
  regs: Uint8Array;
  sregs: Uint8Array;
  fpu: Uint8Array;
  xsave: Uint8Array;
  xcrs: Uint8Array;
  debugregs: Uint8Array;
  lapic: Uint8Array;
  events: Uint8Array;
  mpState: number;
  msrs: MsrValue[];
}

/** Reads and writes one vCPU's state in KVM; the machine supplies it ({@linkcode Vm.saveVcpu}). */
export interface VcpuStateAccess {
  save(): VcpuState;
  restore(state: VcpuState): void;
}

/** Plain data for a `vcpu:<i>` section. */
export function encodeVcpuState(s: VcpuState): StateValue {
  return {
    regs: s.regs,
    sregs: s.sregs,
    fpu: s.fpu,
    xsave: s.xsave,
    xcrs: s.xcrs,
    debugregs: s.debugregs,
    lapic: s.lapic,
    events: s.events,
    mpState: s.mpState,
    msrs: s.msrs.map((m) => [m.index, m.value]),
  };
}

function msrPair(id: string, v: StateValue, i: number): MsrValue {
  const where = `Cannot restore ${id}: field 'msrs' item ${i}`;
  if (!Array.isArray(v) || v.length !== 2) throw new TypeError(`${where} must be [index, value]`);
  const [index, raw] = v;
  if (typeof index !== "number" || !Number.isInteger(index) || index < 0 || index > 0xffffffff) {
    throw new RangeError(`${where} index must be an integer 0..0xffffffff`);
  }
  const value = typeof raw === "bigint"
    ? raw
    : typeof raw === "number" && Number.isInteger(raw)
    ? BigInt(raw)
    : undefined;
  if (value === undefined) throw new TypeError(`${where} value must be an integer`);
  if (value < 0n || value >= 1n << 64n) throw new RangeError(`${where} value must fit in 64 bits`);
  return { index, value };
}

/**
 * Validates an untrusted `vcpu:<i>` payload; every error names the section and the field.
 * @throws {TypeError | RangeError} naming the field
 */
export function decodeVcpuState(id: string, state: StateValue): VcpuState {
  const r = new StateReader(id, state);
  const exact = (field: string, size: number) => r.bytes(field, size, size);
  const msrs = r.list("msrs", MAX_MSRS);
  return {
    regs: exact("regs", ABI.kvm_regs),
    sregs: exact("sregs", ABI.kvm_sregs),
    fpu: exact("fpu", ABI.kvm_fpu),
    xsave: exact("xsave", ABI.kvm_xsave),
    xcrs: exact("xcrs", ABI.kvm_xcrs),
    debugregs: exact("debugregs", ABI.kvm_debugregs),
    lapic: exact("lapic", ABI.kvm_lapic_state),
    events: exact("events", ABI.kvm_vcpu_events),
    mpState: r.int("mpState", 0, 10),
    msrs: msrs.map((m, i) => msrPair(id, m, i)),
  };
}

/** vCPU `index` as a {@linkcode Migratable} with id `vcpu:<index>`. */
export class VcpuMigratable implements Migratable {
  readonly id: string;
  readonly stateVersion = VCPU_STATE_VERSION;
  readonly minStateVersion = VCPU_STATE_MIN_VERSION;
  readonly #access: VcpuStateAccess;

  constructor(index: number, access: VcpuStateAccess) {
    this.id = `vcpu:${index}`;
    this.#access = access;
  }

  save(): StateValue {
    return encodeVcpuState(this.#access.save());
  }

  restore(state: StateValue, version: number): void {
    checkStateVersion(this.id, version, this.minStateVersion, this.stateVersion);
    this.#access.restore(decodeVcpuState(this.id, state));
  }
}
