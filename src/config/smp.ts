/**
 * `-smp [cpus=]N[,maxcpus=N][,sockets=N][,dies=N][,clusters=N][,cores=N][,threads=N]`
 * (StratoVirt `machine_config.rs`: `SmpConfig`, `auto_adjust_topology`; 1..254 vCPUs).
 *
 * ferry presents `N` vCPUs as StratoVirt does for a plain `-smp N`: 1 socket × N cores × 1 thread,
 * all online. A topology that works out to that is accepted; any other (or `maxcpus` above `cpus`,
 * CPU hotplug) is refused as not supported yet.
 * @module
 */
import { type OptionInfo, OptionList } from "./_kv.ts";

/** StratoVirt `MAX_NR_CPUS` (8-bit APIC ids, the IOAPIC takes the next one). */
export const MAX_CPUS = 254;
/** StratoVirt `DEFAULT_CPUS`. */
export const DEFAULT_CPUS = 1;

/** `-smp`. */
export const SMP_OPTION: OptionInfo = {
  name: "-smp",
  arity: "one",
  repeat: false,
  form: "[cpus=]N[,maxcpus=N][,sockets=1][,dies=1][,clusters=1][,cores=N][,threads=1]",
  help: `vCPUs, 1..${MAX_CPUS}, as 1 socket x N cores x 1 thread. Default ${DEFAULT_CPUS}`,
  status: "supported",
};

const U8 = { min: 0, max: 255 };

/**
 * Parses `-smp`.
 * @param text e.g. `2`, `cpus=4,sockets=1,cores=4,threads=1`
 * @returns the number of vCPUs
 * @throws {RangeError} outside 1..254 or an inconsistent topology; {SyntaxError} on a non-number;
 * {TypeError} on CPU hotplug or a topology other than 1 socket x N cores x 1 thread
 */
export function parseSmp(text: string): number {
  const list = new OptionList("-smp", text, { implied: "cpus", form: SMP_OPTION.form });
  list.only(["cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads"]);
  const cpusText = list.required("cpus");
  if (!/^[0-9]+$/.test(cpusText)) throw list.syntax(`'${cpusText}' is not a decimal number`);
  const cpus = Number(cpusText);
  if (cpus < 1 || cpus > MAX_CPUS) {
    throw new RangeError(`Cannot use -smp '${text}': vCPU count must be 1..${MAX_CPUS}`);
  }
  // StratoVirt auto_adjust_topology: 0 means "work it out".
  let maxcpus = list.int("maxcpus", U8) ?? 0;
  let sockets = list.int("sockets", U8) ?? 0;
  const dies = list.int("dies", { min: 1, max: 254 }) ?? 1;
  const clusters = list.int("clusters", { min: 1, max: 254 }) ?? 1;
  let cores = list.int("cores", U8) ?? 0;
  let threads = list.int("threads", U8) ?? 0;
  if (maxcpus === 0) {
    const product = sockets * dies * clusters * cores * threads;
    maxcpus = product > 0 ? product : cpus;
  }
  if (cores === 0) {
    if (sockets === 0) sockets = 1;
    if (threads === 0) threads = 1;
    cores = Math.floor(maxcpus / (sockets * dies * clusters * threads));
  } else if (sockets === 0) {
    if (threads === 0) threads = 1;
    sockets = Math.floor(maxcpus / (dies * clusters * cores * threads));
  }
  if (threads === 0) threads = Math.floor(maxcpus / (sockets * dies * clusters * cores));
  if (maxcpus < cpus || maxcpus > MAX_CPUS) {
    throw list.range(`maxcpus ${maxcpus} must be ${cpus}..${MAX_CPUS}`);
  }
  if (sockets * dies * clusters * cores * threads !== maxcpus) {
    throw list.range(`sockets*dies*clusters*cores*threads must equal maxcpus ${maxcpus}`);
  }
  if (maxcpus > cpus) throw list.unsupported("maxcpus above cpus (CPU hotplug)");
  if (sockets !== 1 || dies !== 1 || clusters !== 1 || threads !== 1) {
    throw list.unsupported(
      `topology sockets=${sockets},dies=${dies},clusters=${clusters},cores=${cores},threads=${threads} ` +
        `(ferry has 1 socket x ${cpus} cores x 1 thread)`,
    );
  }
  return cpus;
}
