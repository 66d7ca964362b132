/**
 * `-m [size=]N[K|M|G][,maxmem=N[K|M|G]]` (StratoVirt `machine_config.rs`: `add_memory`,
 * `memory_unit_conversion`; default unit MiB, default 256 MiB, range 128 MiB..512 GiB).
 * @module
 */
import { type OptionInfo, OptionList } from "./_kv.ts";

const MIB = 1024 * 1024;
/** StratoVirt `DEFAULT_MEMSIZE`: 256 MiB. */
export const DEFAULT_MEMORY_BYTES = 256 * MIB;
/** StratoVirt `MIN_MEMSIZE`: 128 MiB. */
export const MIN_MEMORY_BYTES = 128 * MIB;
/** StratoVirt `MAX_MEMSIZE`: 512 GiB. */
export const MAX_MEMORY_BYTES = 512 * 1024 * MIB;
const PAGE_BYTES = 4096;

/** `-m`. */
export const MEMORY_OPTION: OptionInfo = {
  name: "-m",
  arity: "one",
  repeat: false,
  form: "[size=]N[K|M|G][,maxmem=N[K|M|G]]",
  help: "guest RAM, 128M..512G, default unit M (maxmem only equal to size). Default 256M",
  status: "supported",
};

const UNITS: Record<string, number> = { k: 1024, m: MIB, g: 1024 * MIB };

/**
 * Reads a StratoVirt size: a decimal integer with an optional `K`, `M` or `G` (either case);
 * no unit means MiB.
 * @returns bytes, or undefined when `text` is not of that form
 */
export function parseSize(text: string): number | undefined {
  const m = /^([0-9]+)([kKmMgG]?)$/.exec(text);
  if (!m) return undefined;
  const unit = UNITS[(m[2] || "m").toLowerCase()] as number;
  return Number(m[1]) * unit;
}

/** Writes bytes as the shortest exact `NG`, `NM` or `NK`. */
export function formatSize(bytes: number): string {
  for (const [suffix, unit] of [["G", 1024 * MIB], ["M", MIB], ["K", 1024]] as const) {
    if (bytes % unit === 0) return `${bytes / unit}${suffix}`;
  }
  return `${bytes}`;
}

/**
 * Parses `-m`.
 * @param text e.g. `2G`, `256`, `512m`, `size=1G`
 * @returns guest RAM in bytes
 * @throws {SyntaxError} on a malformed size (`5X`); {RangeError} outside 128M..512G or not a
 * multiple of 4K; {TypeError} for `maxmem` above `size` (memory hotplug, not supported yet)
 */
export function parseMemory(text: string): number {
  const list = new OptionList("-m", text, { implied: "size", form: MEMORY_OPTION.form });
  list.only(["size", "maxmem"]);
  const sizeText = list.required("size");
  const size = parseSize(sizeText);
  if (size === undefined) throw list.syntax(`'${sizeText}' is not a size`);
  if (size < MIN_MEMORY_BYTES || size > MAX_MEMORY_BYTES) {
    throw new RangeError(`Cannot use -m '${text}': memory size must be 128M..512G`);
  }
  if (size % PAGE_BYTES !== 0) {
    throw new RangeError(`Cannot use -m '${text}': memory size must be a multiple of 4K`);
  }
  const maxText = list.string("maxmem");
  if (maxText !== undefined) {
    const max = parseSize(maxText);
    if (max === undefined) throw list.syntax(`maxmem '${maxText}' is not a size`);
    if (max < size) throw list.range(`maxmem ${maxText} is below size ${sizeText}`);
    if (max > MAX_MEMORY_BYTES) throw list.range(`maxmem ${maxText} is above 512G`);
    if (max > size) throw list.unsupported("maxmem above size (memory hotplug)");
  }
  return size;
}
