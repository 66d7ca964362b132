/**
 * What every device offers the machine: bus access (PIO/MMIO) and, for migration, a versioned
 * plain-data snapshot (STYLE.md c.8). Migration code knows only {@linkcode Migratable}.
 * @module
 */

/** A device on the PIO or MMIO bus. `offset` is relative to the start of its range. */
export interface BusDevice {
  read(offset: number, data: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
}

/**
 * Plain data only: numbers, bigint, strings, booleans, Uint8Array, arrays and plain objects.
 * No fds, no class instances; external resources by name (disk path, tap name).
 */
export type StateValue =
  | number
  | bigint
  | string
  | boolean
  | null
  | Uint8Array
  | StateValue[]
  | { [key: string]: StateValue };

/** The migration face of a device or VM component. */
export interface Migratable {
  /** Stable string id, e.g. `"serial:ttyS0"`, `"virtio-blk/rootfs"`, `"vcpu:0"`. */
  readonly id: string;
  /** Version written with the state; bump on any layout change. */
  readonly stateVersion: number;
  /** Oldest version `restore` still accepts. */
  readonly minStateVersion: number;
  /** Plain snapshot; called only while the VM is paused. */
  save(): StateValue;
  /**
   * Applies an untrusted snapshot: validates every field (throwing `TypeError`/`RangeError` that
   * names the field), upgrades older versions, then applies.
   */
  restore(state: StateValue, version: number): void;
}
