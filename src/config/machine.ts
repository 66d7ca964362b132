/**
 * `-machine`, `-accel` and `-cpu` (StratoVirt `machine_manager/src/config/machine_config.rs`:
 * `MachineCmdConfig`, `AccelConfig`, `CpuConfig`).
 * @module
 */
import { type OptionInfo, OptionList } from "./_kv.ts";
import type { MachineTypeConfig } from "./machine_config.ts";

/** `-machine`. */
export const MACHINE_OPTION: OptionInfo = {
  name: "-machine",
  arity: "one",
  repeat: false,
  form: "[type=]q35[,accel=kvm][,dump-guest-core=on][,mem-share=off][,usb=off]",
  help: "machine type; only q35 (x86_64) on kvm. Default q35,accel=kvm",
  status: "supported",
};

/** `-accel`. */
export const ACCEL_OPTION: OptionInfo = {
  name: "-accel",
  arity: "one",
  repeat: false,
  form: "kvm",
  help: "accelerator; only kvm. Default kvm",
  status: "supported",
};

/** `-cpu`. */
export const CPU_OPTION: OptionInfo = {
  name: "-cpu",
  arity: "one",
  repeat: false,
  form: "host[,pmu=off][,sve=off][,kvm-steal-time=off]",
  help: "CPU model; only host (KVM's supported CPUID). Default host",
  status: "supported",
};

const MACHINE_KEYS = ["type", "accel", "dump-guest-core", "dump_guest_core", "mem-share", "usb"] as const;

/** The machine when no `-machine` is given. */
export const DEFAULT_MACHINE: MachineTypeConfig = { type: "q35", accel: "kvm" };

function checkAccel(list: OptionList, accel: string): "kvm" {
  if (accel.toLowerCase() !== "kvm") {
    throw list.invalid(`accelerator '${accel}' is not supported: ferry runs on KVM only`);
  }
  return "kvm";
}

/**
 * Parses `-machine`.
 * @param text e.g. `q35`, `q35,accel=kvm`, `type=q35,dump-guest-core=on`
 * @throws {TypeError} on a type other than q35 ("Machine type 'virt' is not supported: ...") or an
 * unsupported setting; {SyntaxError} on a malformed list
 */
export function parseMachine(text: string): MachineTypeConfig {
  const list = new OptionList("-machine", text, { implied: "type", form: MACHINE_OPTION.form });
  list.only(MACHINE_KEYS);
  const type = list.required("type");
  if (type.toLowerCase() !== "q35") {
    throw new TypeError(
      `Machine type '${type}' is not supported: ferry emulates x86_64 q35 only (use -machine q35)`,
    );
  }
  const accel = checkAccel(list, list.string("accel") ?? "kvm");
  const dumpKey = list.has("dump_guest_core") ? "dump_guest_core" : "dump-guest-core";
  if (!list.bool(dumpKey, true)) throw list.unsupported("dump-guest-core=off");
  if (list.bool("mem-share", false)) throw list.unsupported("mem-share=on (shared guest memory)");
  const usb = list.string("usb");
  if (usb !== undefined && usb !== "off") throw list.unsupported(`usb=${usb}`);
  return { type: "q35", accel };
}

/**
 * Parses `-accel`.
 * @param text `kvm` (or `hypervisor=kvm`)
 * @throws {TypeError} on another accelerator
 */
export function parseAccel(text: string): "kvm" {
  const list = new OptionList("-accel", text, { implied: "hypervisor", form: ACCEL_OPTION.form });
  list.only(["hypervisor"]);
  return checkAccel(list, list.required("hypervisor"));
}

/**
 * Checks `-cpu`: `host` with the aarch64-only features off. Nothing to record: ferry always gives
 * the guest KVM's supported CPUID.
 * @throws {TypeError} on another model or a feature turned on
 */
export function parseCpu(text: string): void {
  const list = new OptionList("-cpu", text, { implied: "family", form: CPU_OPTION.form });
  list.only(["family", "pmu", "sve", "kvm-steal-time", "steal-time"]);
  const family = list.required("family");
  if (family !== "host") throw list.invalid(`CPU model '${family}' is not supported: only host`);
  for (const f of ["pmu", "sve", "kvm-steal-time", "steal-time"]) {
    if (list.bool(f, false)) throw list.unsupported(`${f}=on`);
  }
}
