/**
 * The notification region's `KVM_IOEVENTFD` bindings: queue `q`'s notify address
 * (`BAR0 + NOTIFY + q * notify_off_multiplier`) is bound to the queue's eventfd, so the guest's
 * notify write is a kernel-side trap that wakes the I/O Worker. The binding follows the BAR when
 * the guest moves it. Where it is bound lives in the transport's shared words (every thread sees
 * it); callers hold the transport lock where noted.
 * @module
 */
import { lockShared, unlockShared } from "../shared_lock.ts";
import type { PciConfigSpace } from "../pci/config_space.ts";
import {
  BAR_NOTIFY,
  NOTIFY_OFF_MULTIPLIER,
  T_IOEV_ARMED,
  T_IOEV_HI,
  T_IOEV_LO,
  T_LOCK,
} from "./virtio_pci_regs.ts";

/** The VM operation the binding uses (a `VmFd`). */
export interface IoeventfdVm {
  ioeventfd(opts: { addr: number; len: number; fd: number; pio: boolean; deassign?: boolean }): void;
}

/** One thread's handle on a function's bindings; see the module doc. */
export class IoeventfdBinding {
  readonly #w: Int32Array;
  readonly #config: PciConfigSpace;
  readonly #eventfds: number[];
  readonly #vm: IoeventfdVm | undefined;

  constructor(
    words: Int32Array,
    config: PciConfigSpace,
    queueEventfds: number[],
    vm: IoeventfdVm | undefined,
  ) {
    this.#w = words;
    this.#config = config;
    this.#eventfds = queueEventfds;
    this.#vm = vm;
  }

  /** Binds at BAR0's current address and follows BAR moves from then on. */
  arm(): void {
    lockShared(this.#w, T_LOCK);
    try {
      this.#w[T_IOEV_ARMED] = 1;
      this.rebindLocked();
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
  }

  /** Removes the bindings (teardown). */
  disarm(): void {
    lockShared(this.#w, T_LOCK);
    try {
      this.#bind(this.gpa, false);
      this.#setBound(0);
      this.#w[T_IOEV_ARMED] = 0;
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
  }

  /** Where the notification area is bound now (0: nowhere). */
  get gpa(): number {
    return (this.#w[T_IOEV_HI]! >>> 0) * 2 ** 32 + (this.#w[T_IOEV_LO]! >>> 0);
  }

  #setBound(gpa: number): void {
    this.#w[T_IOEV_LO] = gpa % 2 ** 32;
    this.#w[T_IOEV_HI] = Math.floor(gpa / 2 ** 32);
  }

  /** The BARs were reprogrammed (or restored): rebind if armed. */
  barsChanged(): void {
    lockShared(this.#w, T_LOCK);
    try {
      this.rebindLockedIfArmed();
    } finally {
      unlockShared(this.#w, T_LOCK);
    }
  }

  /** {@linkcode rebindLocked} when armed (caller holds the lock). */
  rebindLockedIfArmed(): void {
    if (this.#w[T_IOEV_ARMED] === 1) this.rebindLocked();
  }

  /** Moves the bindings to BAR0's decoded address (caller holds the lock). */
  rebindLocked(): void {
    const now = this.#config.decodedBars()[0] ?? 0;
    const old = this.gpa;
    if (now === old) return;
    this.#bind(old, false);
    this.#bind(now, true);
    this.#setBound(now);
  }

  #bind(bar: number, assign: boolean): void {
    if (bar === 0 || !this.#vm) return;
    this.#eventfds.forEach((fd, q) => {
      if (fd < 0) return;
      this.#vm!.ioeventfd({
        addr: bar + BAR_NOTIFY + q * NOTIFY_OFF_MULTIPLIER,
        len: 2,
        fd,
        pio: false,
        deassign: !assign,
      });
    });
  }
}
