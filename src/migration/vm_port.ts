/**
 * What migration needs from a VM, and nothing more: the machine implements {@linkcode MigrationVm};
 * tests implement it over plain buffers (`_fake_vm.ts`). Migration never imports `machine/`
 * (STYLE.md c.2).
 * @module
 */
import type { GuestMemory } from "../memory/guest_memory.ts";

/** One piece of saved state: a vCPU, the VM (PIC, IOAPIC, PIT, clock) or a device. */
export interface Section {
  /** Stable string id, e.g. `"vcpu:0"`, `"serial:ttyS0"`, `"virtio-blk/rootfs"` (≤ 256 UTF-8 bytes). */
  id: string;
  /** The state version of the component that wrote `payload`. */
  version: number;
  /** Opaque to migration (≤ 16 MiB); usually {@linkcode encodeState} output. */
  payload: Uint8Array;
}

/** What migration needs from a VM; the machine implements it. */
export interface MigrationVm {
  /** RAM regions; the source reads them, the destination writes them. */
  readonly memory: GuestMemory;
  /**
   * Canonical configuration attributes, compared before any RAM moves, e.g.
   * `{"-m": "268435456", "-smp": "2", "device rootfs: addr": "0x2.0"}`.
   */
  configAttributes(): Record<string, string>;
  /** Host attributes that must match, e.g. `{"cpu vendor": "GenuineIntel", "kvm api version": "12"}`. */
  hostAttributes(): Record<string, string>;
  /** Source: turns KVM dirty logging on and resets the VMM bitmap. */
  startDirtyLog(): void;
  /**
   * Per memory region (same order as `memory.regions`), a page bitmap (bit `p & 31` of word
   * `p >> 5` is page `p`): KVM's log ORed with the VMM's own bitmap. Clears both.
   */
  syncDirtyLog(): Uint32Array[];
  /** Source: turns dirty logging off. */
  stopDirtyLog(): void;
  /** Every vCPU out of `KVM_RUN` and devices quiesced. */
  pause(): Promise<void>;
  /**
   * False when the last `pause()` found the VM already paused (e.g. QMP `stop` before
   * `migrate`): a rollback then leaves it paused instead of resuming it. Set as soon as `pause()`
   * is called. Absent: the VM is taken to have been running.
   */
  readonly pausedByMigration?: boolean;
  /**
   * Optional, source: true while the vCPUs and device I/O are stopped, so guest RAM cannot change
   * (a stopped guest; `cont` is refused during a migration). RAM then goes out without a copy.
   */
  readonly guestPaused?: boolean;
  /** Source, rolling back a failed or canceled migration: runs the vCPUs it paused again. */
  resumeAfterRollback(): Promise<void>;
  /**
   * Destination, after `restoreState`: starts the migrated guest, or leaves it paused when it was
   * paused on the source (QEMU's rule), and tells the network where it went.
   */
  startIncomingGuest(): Promise<void>;
  /**
   * Optional, destination, once every page has landed (the migration completed): RAM that was
   * kept in small pages for the landing may take transparent huge pages now.
   */
  landed?(): void;
  /** Called paused: every vCPU, VM and device section. */
  saveState(): Promise<Section[]>;
  /** Destination: validates and applies; throws an error naming the section and field. */
  restoreState(sections: Section[]): Promise<void>;
  /**
   * Optional, source (auto-converge): keeps the vCPUs out of `KVM_RUN` for `percent` % of each
   * period; 0 lets them run free. Takes effect at once; resolves once applied (for 0: once every
   * vCPU may run again). Absent: the VM cannot be throttled and auto-converge does nothing.
   */
  setCpuThrottle?(percent: number): Promise<void>;
  /**
   * Optional: which pages of `[gpa, gpa + pageCount pages)` the host ever backed with memory, one
   * byte per page (bit 0 = resident). A page never resident reads as zero, so the source need not
   * scan it and the destination need not check it. Undefined when unknown.
   */
  residency?(gpa: number, pageCount: number): Uint8Array | undefined;
  /**
   * Optional, destination: raw RAM is about to be read into `[gpa, gpa + pageCount pages)`; the
   * host may back those pages and the ones after them in bulk, off the main thread (far cheaper
   * than faulting them in one by one during `recv`). Never changes guest RAM contents.
   */
  populate?(gpa: number, pageCount: number): void;
  /**
   * Optional, destination, before RAM arrives on the main connection: a way to land raw pages in
   * guest RAM that was never backed, the host backing and filling each page in one step (far
   * cheaper than `populate` and then writing). Until `close()`, a page that `residency` does not
   * report resident must not be touched any other way (a touch would wait until then). Undefined
   * when the host cannot (no userfaultfd, or `residency` unknown).
   */
  openPlacer?(): RamPlacer | undefined;
  /** Optional, destination: OS thread ids of the vCPUs in vCPU order (post-copy blocktimes). */
  vcpuThreadIds?(): readonly number[];
  /** Source, paused, before the last state is sent (e.g. release disk locks). */
  onSwitchover?(): Promise<void>;
  /** Source, after a failure or cancel that happened after `onSwitchover` (e.g. re-take locks). */
  onRollback?(): Promise<void>;
}

/** Lands raw pages in fresh guest RAM ({@linkcode MigrationVm.openPlacer}). */
export interface RamPlacer {
  /** Places `bytes` (whole pages) at `gpa`; `bytes` must not change until it settles. */
  place(gpa: number, bytes: Uint8Array): Promise<void>;
  /** Ends placing: every page faults normally again. */
  close(): void;
}
