/**
 * A 16550A UART (8 I/O ports, ttyS0 at 0x3f8). Transmit is instantaneous: a THR write goes straight to
 * `output`, so LSR always shows THRE|TEMT. Receive goes through a 16-byte RX FIFO (1 byte when the guest
 * leaves the FIFO disabled) fed by {@linkcode Uart16550.pushInput}. Loopback (MCR bit 4) echoes THR into
 * RX and MSR follows MCR. Interrupt identification follows the datasheet priorities: line status > RX
 * data (or character timeout, reported as soon as the FIFO holds fewer bytes than the trigger) >
 * THR empty > modem status; `irq(level)` is called whenever the level changes.
 *
 * Threads: every register and the FIFO live in one SharedArrayBuffer guarded by a spinlock, so each
 * vCPU Worker and the main thread build their own `Uart16550` over the same buffer and all see one
 * device. `output` and `irq` are called with the lock held (that keeps output in order and the IRQ line
 * equal to the last state): they must not call back into the device.
 *
 * State (see uart16550_state.ts): IER, FCR, LCR, MCR, LSR error bits, MSR, SCR, divisor, RX FIFO and the
 * pending THRE interrupt.
 *
 * @example
 * ```ts
 * const shared = Uart16550.createShared();
 * const uart = new Uart16550({ shared, output: (b) => Deno.stdout.writeSync(b), irq: (l) => line(4, l) });
 * pio.register(0x3f8, 8, uart, uart.id);
 * // In a vCPU Worker, from the same `shared` posted to it:
 * const copy = new Uart16550({ shared, output, irq });
 * ```
 * @module
 */
import type { BusDevice, Migratable, StateValue } from "../device.ts";
import { lockShared, unlockShared } from "../shared_lock.ts";
import {
  parseUartState,
  UART_RX_FIFO_SIZE,
  UART_STATE_MIN_VERSION,
  UART_STATE_VERSION,
} from "./uart16550_state.ts";

/** Register offsets from the base port. */
export const UART_RBR_THR = 0, UART_IER = 1, UART_IIR_FCR = 2, UART_LCR = 3;
export const UART_MCR = 4, UART_LSR = 5, UART_MSR = 6, UART_SCR = 7;

/** IER bits. */
export const IER_RDI = 0x01, IER_THRI = 0x02, IER_RLSI = 0x04, IER_MSI = 0x08;
/** IIR interrupt ids (bits 0..3) and the FIFO-enabled marker (bits 6..7). */
export const IIR_NO_INT = 0x01, IIR_MSI = 0x00, IIR_THRI = 0x02, IIR_RDI = 0x04, IIR_RLSI = 0x06;
export const IIR_CTI = 0x0c, IIR_FIFO_ENABLED = 0xc0;
/** FCR bits. */
export const FCR_ENABLE = 0x01, FCR_CLEAR_RX = 0x02, FCR_CLEAR_TX = 0x04;
/** LCR divisor latch access bit. */
export const LCR_DLAB = 0x80;
/** MCR bits. */
export const MCR_DTR = 0x01, MCR_RTS = 0x02, MCR_OUT1 = 0x04, MCR_OUT2 = 0x08, MCR_LOOP = 0x10;
/** LSR bits. */
export const LSR_DR = 0x01, LSR_OE = 0x02, LSR_PE = 0x04, LSR_FE = 0x08, LSR_BI = 0x10;
export const LSR_THRE = 0x20, LSR_TEMT = 0x40, LSR_FIFO_ERR = 0x80;
/** MSR bits. */
export const MSR_DCTS = 0x01, MSR_DDSR = 0x02, MSR_TERI = 0x04, MSR_DDCD = 0x08;
export const MSR_CTS = 0x10, MSR_DSR = 0x20, MSR_RI = 0x40, MSR_DCD = 0x80;

const LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI | LSR_FIFO_ERR;
/** With nothing attached to the modem lines: carrier, data set ready and clear to send (as QEMU). */
const MSR_IDLE = MSR_DCD | MSR_DSR | MSR_CTS;
const RX_TRIGGER = [1, 4, 8, 14] as const;

// Int32 word indexes in the shared buffer.
const W_LOCK = 0, W_IER = 1, W_FCR = 2, W_LCR = 3, W_MCR = 4, W_LSR = 5, W_MSR = 6, W_SCR = 7;
const W_DLL = 8, W_DLM = 9, W_THR_PENDING = 10, W_IRQ = 11, W_RX_HEAD = 12, W_RX_COUNT = 13;
/** Bumped (and notified) whenever a guest read frees FIFO room; {@linkcode Uart16550.waitForRoom} sleeps on it. */
const W_RX_READS = 14;
const WORDS = 16;
const RX_BYTE_OFFSET = WORDS * 4;
const SHARED_BYTES = RX_BYTE_OFFSET + UART_RX_FIFO_SIZE;

/** Options for {@linkcode Uart16550}. */
export interface Uart16550Options {
  /** The device's registers, from {@linkcode Uart16550.createShared}; the same buffer in every thread. */
  shared: SharedArrayBuffer;
  /** Receives transmitted bytes. The array is reused: copy it to keep it. Called with the lock held. */
  output: (bytes: Uint8Array) => void;
  /**
   * Sets the interrupt line (IRQ 4 for ttyS0). Called only on a change, with the lock held.
   * @default a no-op
   */
  irq?: (level: boolean) => void;
  /**
   * Stable id for migration and messages.
   * @default "serial:ttyS0"
   */
  id?: string;
}

function noIrq(_level: boolean): void {}

/** Power-on register values (LCR 8N1, divisor 12 = 9600 baud, MCR OUT2, FIFO off and empty). */
function resetWords(w: Int32Array): void {
  for (let i = W_IER; i < WORDS; i++) if (i !== W_IRQ && i !== W_RX_READS) w[i] = 0;
  w[W_LCR] = 0x03;
  w[W_MCR] = MCR_OUT2;
  w[W_LSR] = LSR_THRE | LSR_TEMT;
  w[W_MSR] = MSR_IDLE;
  w[W_DLL] = 12;
}

/** A 16550A UART whose registers live in a SharedArrayBuffer; see the module doc. */
export class Uart16550 implements BusDevice, Migratable {
  /** Stable id, e.g. `"serial:ttyS0"`. */
  readonly id: string;
  readonly stateVersion: number = UART_STATE_VERSION;
  readonly minStateVersion: number = UART_STATE_MIN_VERSION;
  readonly #w: Int32Array;
  readonly #rx: Uint8Array;
  readonly #output: (bytes: Uint8Array) => void;
  readonly #irq: (level: boolean) => void;
  readonly #byte = new Uint8Array(1);

  /**
   * Allocates and resets the shared registers (LCR 8N1, divisor 12 = 9600 baud, MCR OUT2).
   * Call once per UART, on the main thread, and pass the buffer to every thread.
   */
  static createShared(): SharedArrayBuffer {
    const shared = new SharedArrayBuffer(SHARED_BYTES);
    resetWords(new Int32Array(shared, 0, WORDS));
    return shared;
  }

  /** Builds this thread's view of the UART in `options.shared`. */
  constructor(options: Uart16550Options) {
    if (!(options.shared instanceof SharedArrayBuffer) || options.shared.byteLength !== SHARED_BYTES) {
      throw new TypeError("Cannot create Uart16550: 'shared' must come from Uart16550.createShared()");
    }
    this.id = options.id ?? "serial:ttyS0";
    this.#w = new Int32Array(options.shared, 0, WORDS);
    this.#rx = new Uint8Array(options.shared, RX_BYTE_OFFSET, UART_RX_FIFO_SIZE);
    this.#output = options.output;
    this.#irq = options.irq ?? noIrq;
  }

  /** Bus read: each byte of a wider access reads the next register. */
  read(offset: number, data: Uint8Array): void {
    const w = this.#w;
    lockShared(w, W_LOCK);
    try {
      for (let i = 0; i < data.length; i++) data[i] = this.#readReg(offset + i);
      this.#updateIrq();
    } finally {
      unlockShared(w, W_LOCK);
    }
  }

  /** Bus write: each byte of a wider access writes the next register. */
  write(offset: number, data: Uint8Array): void {
    const w = this.#w;
    lockShared(w, W_LOCK);
    try {
      for (let i = 0; i < data.length; i++) this.#writeReg(offset + i, data[i]!);
      this.#updateIrq();
    } finally {
      unlockShared(w, W_LOCK);
    }
  }

  /**
   * Offers received bytes (e.g. from stdin) to the RX FIFO.
   * In loopback mode the receiver is disconnected, as on hardware: the bytes are dropped (and counted).
   * @returns how many bytes were taken; offer the rest again after {@linkcode waitForRoom}
   */
  pushInput(bytes: Uint8Array): number {
    const w = this.#w;
    lockShared(w, W_LOCK);
    try {
      if (w[W_MCR]! & MCR_LOOP) return bytes.length;
      let n = 0;
      while (n < bytes.length && this.#rxPush(bytes[n]!)) n++;
      if (n > 0) this.#updateIrq();
      return n;
    } finally {
      unlockShared(w, W_LOCK);
    }
  }

  /** Bytes the RX FIFO can still take now. */
  rxRoom(): number {
    const w = this.#w;
    lockShared(w, W_LOCK);
    try {
      return this.#rxCapacity() - w[W_RX_COUNT]!;
    } finally {
      unlockShared(w, W_LOCK);
    }
  }

  /**
   * Resolves when the guest has read from the FIFO (so {@linkcode pushInput} may take more), or after
   * `timeoutMs`. For the main thread's input loop; never blocks the event loop.
   * @returns true when woken by a read, false on timeout
   */
  async waitForRoom(timeoutMs = 1000): Promise<boolean> {
    const w = this.#w;
    const seen = Atomics.load(w, W_RX_READS);
    if (this.rxRoom() > 0) return true;
    const r = Atomics.waitAsync(w, W_RX_READS, seen, timeoutMs);
    const v = r.async ? await r.value : r.value;
    return v !== "timed-out";
  }

  /** Returns to the power-on state (machine reset) and lowers the line if it was high. */
  reset(): void {
    const w = this.#w;
    lockShared(w, W_LOCK);
    try {
      resetWords(w);
      this.#rxClear();
      this.#updateIrq();
    } finally {
      unlockShared(w, W_LOCK);
    }
  }

  /** Plain snapshot of the registers and FIFO (any thread; the VM should be paused). */
  save(): StateValue {
    const w = this.#w;
    lockShared(w, W_LOCK);
    try {
      const count = w[W_RX_COUNT]!, head = w[W_RX_HEAD]!;
      const rx = new Uint8Array(count);
      for (let i = 0; i < count; i++) rx[i] = this.#rx[(head + i) % UART_RX_FIFO_SIZE]!;
      return {
        ier: w[W_IER]!,
        fcr: w[W_FCR]!,
        lcr: w[W_LCR]!,
        mcr: w[W_MCR]!,
        lsr: w[W_LSR]!,
        msr: w[W_MSR]!,
        scr: w[W_SCR]!,
        divisor: w[W_DLM]! << 8 | w[W_DLL]!,
        thrInterruptPending: w[W_THR_PENDING] === 1,
        rx,
      };
    } finally {
      unlockShared(w, W_LOCK);
    }
  }

  /**
   * Validates `state` (see uart16550_state.ts), then applies it and sets the IRQ line to match.
   * @throws {TypeError | RangeError} naming the field; the device is unchanged then
   */
  restore(state: StateValue, version: number): void {
    const s = parseUartState(this.id, state, version);
    const w = this.#w;
    lockShared(w, W_LOCK);
    try {
      w[W_IER] = s.ier;
      w[W_FCR] = s.fcr;
      w[W_LCR] = s.lcr;
      w[W_MCR] = s.mcr;
      w[W_LSR] = (s.lsr & LSR_ERRORS) | LSR_THRE | LSR_TEMT | (s.rx.length > 0 ? LSR_DR : 0);
      w[W_MSR] = s.msr;
      w[W_SCR] = s.scr;
      w[W_DLL] = s.divisor & 0xff;
      w[W_DLM] = s.divisor >> 8;
      w[W_THR_PENDING] = s.thrInterruptPending ? 1 : 0;
      this.#rx.fill(0);
      this.#rx.set(s.rx);
      w[W_RX_HEAD] = 0;
      w[W_RX_COUNT] = s.rx.length;
      this.#updateIrq();
    } finally {
      unlockShared(w, W_LOCK);
    }
  }

  // ---- everything below runs with the lock held ----

  #readReg(reg: number): number {
    const w = this.#w;
    switch (reg) {
      case UART_RBR_THR:
        return w[W_LCR]! & LCR_DLAB ? w[W_DLL]! : this.#rxPop();
      case UART_IER:
        return w[W_LCR]! & LCR_DLAB ? w[W_DLM]! : w[W_IER]!;
      case UART_IIR_FCR: {
        const iid = this.#interruptId();
        if (iid === IIR_THRI) w[W_THR_PENDING] = 0;
        return iid | (w[W_FCR]! & FCR_ENABLE ? IIR_FIFO_ENABLED : 0);
      }
      case UART_LCR:
        return w[W_LCR]!;
      case UART_MCR:
        return w[W_MCR]!;
      case UART_LSR: {
        const lsr = w[W_LSR]!;
        w[W_LSR] = lsr & ~LSR_ERRORS;
        return lsr;
      }
      case UART_MSR: {
        const msr = w[W_MSR]!;
        w[W_MSR] = msr & 0xf0;
        return msr;
      }
      case UART_SCR:
        return w[W_SCR]!;
      default:
        return 0xff;
    }
  }

  #writeReg(reg: number, v: number): void {
    const w = this.#w;
    switch (reg) {
      case UART_RBR_THR:
        if (w[W_LCR]! & LCR_DLAB) {
          w[W_DLL] = v;
          return;
        }
        if (w[W_MCR]! & MCR_LOOP) {
          if (!this.#rxPush(v)) w[W_LSR] = w[W_LSR]! | LSR_OE;
        } else {
          this.#byte[0] = v;
          this.#output(this.#byte);
        }
        // Sent at once: THR is empty again and the THRE interrupt is pending.
        w[W_THR_PENDING] = 1;
        return;
      case UART_IER: {
        if (w[W_LCR]! & LCR_DLAB) {
          w[W_DLM] = v;
          return;
        }
        const old = w[W_IER]!;
        const ier = v & 0x0f;
        w[W_IER] = ier;
        // Enabling THRI with THR empty raises it (QEMU, Bochs; Windows relies on it).
        if ((old ^ ier) & IER_THRI) w[W_THR_PENDING] = ier & IER_THRI ? 1 : 0;
        return;
      }
      case UART_IIR_FCR: {
        const old = w[W_FCR]!;
        if ((old ^ v) & FCR_ENABLE || v & FCR_CLEAR_RX) this.#rxClear();
        w[W_FCR] = v & 0xc9;
        return;
      }
      case UART_LCR:
        w[W_LCR] = v;
        return;
      case UART_MCR:
        this.#setMcr(v & 0x1f);
        return;
      case UART_SCR:
        w[W_SCR] = v;
        return;
      default:
        return; // LSR and MSR writes (factory test) are ignored, as offsets past 7.
    }
  }

  #setMcr(mcr: number): void {
    const w = this.#w;
    w[W_MCR] = mcr;
    const old = w[W_MSR]!;
    let status = MSR_IDLE;
    if (mcr & MCR_LOOP) {
      status = (mcr & MCR_RTS ? MSR_CTS : 0) | (mcr & MCR_DTR ? MSR_DSR : 0) |
        (mcr & MCR_OUT1 ? MSR_RI : 0) | (mcr & MCR_OUT2 ? MSR_DCD : 0);
    }
    const changed = old ^ status;
    let delta = old & 0x0f;
    if (changed & MSR_CTS) delta |= MSR_DCTS;
    if (changed & MSR_DSR) delta |= MSR_DDSR;
    if (changed & MSR_DCD) delta |= MSR_DDCD;
    if (old & MSR_RI && !(status & MSR_RI)) delta |= MSR_TERI;
    w[W_MSR] = status | delta;
  }

  #interruptId(): number {
    const w = this.#w;
    const ier = w[W_IER]!;
    if (ier & IER_RLSI && w[W_LSR]! & (LSR_OE | LSR_PE | LSR_FE | LSR_BI)) return IIR_RLSI;
    const count = w[W_RX_COUNT]!;
    if (ier & IER_RDI && count > 0) {
      const fcr = w[W_FCR]!;
      if (fcr & FCR_ENABLE && count < RX_TRIGGER[fcr >> 6]!) return IIR_CTI;
      return IIR_RDI;
    }
    if (ier & IER_THRI && w[W_THR_PENDING] === 1) return IIR_THRI;
    if (ier & IER_MSI && w[W_MSR]! & 0x0f) return IIR_MSI;
    return IIR_NO_INT;
  }

  #updateIrq(): void {
    const level = this.#interruptId() !== IIR_NO_INT ? 1 : 0;
    const w = this.#w;
    if (w[W_IRQ] !== level) {
      w[W_IRQ] = level;
      this.#irq(level === 1);
    }
  }

  #rxCapacity(): number {
    return this.#w[W_FCR]! & FCR_ENABLE ? UART_RX_FIFO_SIZE : 1;
  }

  #rxPush(b: number): boolean {
    const w = this.#w;
    const count = w[W_RX_COUNT]!;
    if (count >= this.#rxCapacity()) return false;
    this.#rx[(w[W_RX_HEAD]! + count) % UART_RX_FIFO_SIZE] = b;
    w[W_RX_COUNT] = count + 1;
    w[W_LSR] = w[W_LSR]! | LSR_DR;
    return true;
  }

  #rxPop(): number {
    const w = this.#w;
    const count = w[W_RX_COUNT]!;
    if (count === 0) return 0;
    const head = w[W_RX_HEAD]!;
    const b = this.#rx[head]!;
    w[W_RX_HEAD] = (head + 1) % UART_RX_FIFO_SIZE;
    w[W_RX_COUNT] = count - 1;
    if (count === 1) w[W_LSR] = w[W_LSR]! & ~LSR_DR;
    Atomics.add(w, W_RX_READS, 1);
    Atomics.notify(w, W_RX_READS);
    return b;
  }

  #rxClear(): void {
    const w = this.#w;
    w[W_RX_HEAD] = 0;
    w[W_RX_COUNT] = 0;
    w[W_LSR] = w[W_LSR]! & ~LSR_DR;
    // Room may have grown (cleared, or the FIFO switched on): wake the input loop.
    Atomics.add(w, W_RX_READS, 1);
    Atomics.notify(w, W_RX_READS);
  }
}
