/**
 * The migratable state of a {@linkcode Uart16550}: every register, the divisor latch, the RX FIFO
 * contents and the pending-THRE-interrupt flag. IIR is not stored: it is derived from the rest.
 * LSR's DR, THRE and TEMT bits are derived too (DR from the FIFO; transmit is instantaneous).
 * @module
 */
import type { StateValue } from "../device.ts";
import { checkStateVersion, StateReader } from "../state_fields.ts";

/** Version written with the state; bump on any layout change. */
export const UART_STATE_VERSION = 1;
/** Oldest version {@linkcode parseUartState} still reads. */
export const UART_STATE_MIN_VERSION = 1;
/** RX FIFO depth of a 16550A. With the FIFO disabled (FCR bit 0 clear) the UART holds one byte. */
export const UART_RX_FIFO_SIZE = 16;

/** Plain data; a `type` (not an `interface`) so it is assignable to {@linkcode StateValue}. */
export type UartState = {
  /** Interrupt enable, bits 0..3. */
  ier: number;
  /** Last FCR write as kept: FIFO enable (bit 0), DMA mode (bit 3), RX trigger (bits 6..7). */
  fcr: number;
  lcr: number;
  /** Modem control, bits 0..4 (bit 4 is loopback). */
  mcr: number;
  /** Line status; only the latched error bits (OE, PE, FE, BI, bit 7) are taken on restore. */
  lsr: number;
  msr: number;
  scr: number;
  /** Divisor latch, DLM << 8 | DLL. */
  divisor: number;
  /** A THR-empty interrupt is pending (cleared by reading IIR while it is the reported source). */
  thrInterruptPending: boolean;
  /** RX FIFO contents, oldest first. */
  rx: Uint8Array;
};

/**
 * Validates an untrusted payload (and upgrades older versions) into a {@linkcode UartState}.
 * @param id device id for messages, e.g. `"serial:ttyS0"`
 * @throws {TypeError | RangeError} naming the field, or the version when it is not readable
 */
export function parseUartState(id: string, state: StateValue, version: number): UartState {
  checkStateVersion(id, version, UART_STATE_MIN_VERSION, UART_STATE_VERSION);
  const r = new StateReader(id, state);
  const fcr = r.int("fcr", 0, 255);
  if (fcr & ~0xc9) {
    throw new RangeError(`Cannot restore ${id}: field 'fcr' has reserved bits set (got ${fcr})`);
  }
  const s: UartState = {
    ier: r.int("ier", 0, 15),
    fcr,
    lcr: r.int("lcr", 0, 255),
    mcr: r.int("mcr", 0, 31),
    lsr: r.int("lsr", 0, 255),
    msr: r.int("msr", 0, 255),
    scr: r.int("scr", 0, 255),
    divisor: r.int("divisor", 0, 0xffff),
    thrInterruptPending: r.bool("thrInterruptPending"),
    rx: r.bytes("rx", 0, UART_RX_FIFO_SIZE),
  };
  if (!(fcr & 1) && s.rx.length > 1) {
    throw new RangeError(
      `Cannot restore ${id}: field 'rx' holds ${s.rx.length} bytes but the FIFO is disabled`,
    );
  }
  return s;
}
