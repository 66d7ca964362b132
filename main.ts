/**
 * ferry: a KVM virtual machine monitor with live migration, StratoVirt's command line and QMP.
 * Entry point only: argv → MachineConfig → Vmm; the logic lives in src/.
 * @module
 */
import { runFerry } from "./src/vmm/run.ts";

if (import.meta.main) {
  Deno.exit(await runFerry(Deno.args));
}
