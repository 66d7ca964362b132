/**
 * What the I/O Worker serves, as plain (postable) data: the machine builds it
 * (`machine/pci.ts` `ioPlan()`), `io_control.ts` posts it and `io_loop.ts` builds its devices from it.
 * @module
 */
import type { MemoryLayout } from "../../memory/guest_memory.ts";
import type { BlockBackendPlan } from "./block/block.ts";
import type { NetBackendPlan } from "./net/net.ts";
import type { VirtioPciPlan } from "./pci_transport.ts";

/** A device as the I/O Worker serves it. Plain data. */
export type IoDevicePlan =
  | { kind: "virtio-blk"; transport: VirtioPciPlan; block: BlockBackendPlan }
  | { kind: "virtio-net"; transport: VirtioPciPlan; net: NetBackendPlan };

/** Everything the I/O Worker needs. Plain data (postable). */
export interface IoPlan {
  memory: MemoryLayout;
  /** -1 without KVM (tests). */
  vmFd: number;
  devices: IoDevicePlan[];
}
