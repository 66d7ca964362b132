/**
 * A PCI device/function on bus 0, and its one text grammar: `addr=SLOT[.FN]` as StratoVirt reads it
 * (`get_pci_df`: each part hex with `0x`, or decimal), printed back as `0xSLOT.FN`. Device ids and bus
 * paths use the lspci form {@linkcode pciSlotName} (`04.0`).
 * @module
 */

/** A device/function number on bus 0. */
export interface PciAddress {
  /** 0..31 */
  slot: number;
  /** 0..7 */
  fn: number;
}

function readNumber(text: string): number | undefined {
  if (/^0[xX][0-9a-fA-F]+$/.test(text)) return parseInt(text.slice(2), 16);
  if (/^[0-9]+$/.test(text)) return Number(text);
  return undefined;
}

/**
 * Parses a PCI `addr`: `SLOT` or `SLOT.FN`, each hex with `0x` or decimal.
 * @param text e.g. `0x3`, `3`, `0x3.0x1`
 * @returns the slot and function, or a reason it is not one
 */
export function parsePciAddr(text: string): PciAddress | string {
  const parts = text.split(".");
  if (parts.length > 2) return "more than SLOT.FN";
  const slot = readNumber(parts[0] as string);
  if (slot === undefined) return `slot '${parts[0]}' is not a number`;
  if (slot > 31) return `slot ${slot} is outside 0..31`;
  const fnText = parts[1] ?? "0";
  const fn = readNumber(fnText);
  if (fn === undefined) return `function '${fnText}' is not a number`;
  if (fn > 7) return `function ${fn} is outside 0..7`;
  return { slot, fn };
}

/** Writes a PCI address as `addr=` takes it: `0xSLOT.FN` (e.g. `0x2.0`). */
export function formatPciAddr(addr: PciAddress): string {
  return `0x${addr.slot.toString(16)}.${addr.fn}`;
}

/** The lspci form used in device ids and bus paths: `04.0`, `1f.7`. */
export function pciSlotName(addr: PciAddress): string {
  return `${addr.slot.toString(16).padStart(2, "0")}.${addr.fn}`;
}
