/**
 * The end-to-end digest checked at switch-over: a CRC32C per guest page, kept up to date on the
 * source as pages are sent and on the destination as they land, reduced to one value per side
 * when all RAM has moved; plus a CRC32C over every state section as sent / as received. The
 * destination compares both with the source's `digest` message before it restores state or
 * resumes the guest, so RAM or state damaged anywhere between the source's RAM and the
 * destination's RAM fails the migration.
 *
 * Why a table rather than a pass over all RAM in the pause: the table costs one CRC per page
 * while pages move (the data is hot in cache then) and reducing it at switch-over reads 4 bytes
 * per page instead of 4096. Zero pages get a constant ({@linkcode ZERO_PAGE_CRC}) without being
 * read.
 * @module
 */
import { type GuestMemory, PAGE_SIZE, type Region } from "../memory/guest_memory.ts";
import { shim } from "../ffi/shim.ts";
import { crc32c, DIGEST_PAYLOAD_BYTES, ProtocolError, type RamRun } from "./stream.ts";

const PAGE = BigInt(PAGE_SIZE);

/** CRC32C of `bytes`, continuing `crc` (0 to start); the wire's checksum (stream.ts). */
export { crc32c };

/** CRC32C of a 4 KiB page of zeros. */
export const ZERO_PAGE_CRC = 0x98f94189;

/** A table entry no page ever had: a page the destination never received. */
const NEVER = 0;

/** Digest algorithm id on the wire: per-page CRC32C table reduced by CRC32C, state by CRC32C. */
export const DIGEST_ALGORITHM_CRC32C_PAGES = 1;

/** Bytes of the `digest` payload. */
export const DIGEST_BYTES = DIGEST_PAYLOAD_BYTES;

/** The two values compared at switch-over. */
export interface SwitchoverDigest {
  /** CRC32C over every page's CRC32C, in region then page order. */
  ram: number;
  /** CRC32C over every section as it was on the wire, in order. */
  state: number;
  /** Guest pages covered. */
  pages: number;
  /** State sections covered. */
  sections: number;
}

/** Per-page CRC32C table of guest RAM and a running CRC32C of state sections. */
export class MigrationDigest {
  #memory: GuestMemory;
  #tables: Uint32Array[];
  #state = 0;
  #sections = 0;

  /** @param memory the VM's guest RAM */
  constructor(memory: GuestMemory) {
    this.#memory = memory;
    // Shared, so that multifd's channel Workers record the pages they move (multifd.ts).
    this.#tables = memory.regions.map((r) =>
      new Uint32Array(new SharedArrayBuffer(r.sizeBytes / PAGE_SIZE * 4)).fill(NEVER)
    );
  }

  /** The per-page tables, one per region (over SharedArrayBuffers; Workers fill them with {@linkcode recordPages}). */
  get tables(): readonly Uint32Array[] {
    return this.#tables;
  }

  /**
   * Records the runs of one RAM message (already checked against guest RAM): on the source right
   * after the message was sent, on the destination right after it landed. `pageCrcs`, when given,
   * holds the CRC32C of every raw page of the runs in order, computed as the bytes were copied to
   * the send buffer or read from the connection; without it the pages are read again.
   */
  recordRuns(runs: readonly RamRun[], pageCrcs?: Uint32Array): void {
    let k = 0;
    for (const r of runs) {
      const region = this.#memory.regionOf(r.gpa, r.pageCount * PAGE_SIZE);
      if (!region) {
        throw new RangeError(`Cannot record RAM run at 0x${r.gpa.toString(16)}: outside guest RAM`);
      }
      if (pageCrcs && !r.zero) {
        // The raw pages' CRC32Cs as sent / as received (MessageWriter.sendPages, MessageReader.readPages).
        const table = this.#tables[this.#memory.regions.indexOf(region)]!;
        table.set(pageCrcs.subarray(k, k + r.pageCount), (r.gpa - region.gpa) / PAGE_SIZE);
        k += r.pageCount;
        continue;
      }
      this.recordRun(region, r.gpa - region.gpa, r.pageCount, r.zero);
    }
  }

  /**
   * Records what `pageCount` pages at `off` of `region` now hold: zero pages get the constant,
   * others are checksummed from the region's bytes. Call it on the source right when a run is
   * sent and on the destination right after a run landed.
   */
  recordRun(region: Region, off: number, pageCount: number, zero: boolean): void {
    const ri = this.#memory.regions.indexOf(region);
    const table = this.#tables[ri];
    if (!table) throw new RangeError("Cannot record pages of a region the digest does not know");
    recordPages(table, region.bytes, off, pageCount, zero);
  }

  /** Records one `state` message payload, as sent or as received. */
  recordSection(payload: Uint8Array): void {
    this.#state = crc32c(payload, this.#state);
    this.#sections++;
  }

  /** Reduces the table to one value: reads 4 bytes per guest page. */
  finish(): SwitchoverDigest {
    let ram = 0;
    let pages = 0;
    for (const t of this.#tables) {
      ram = crc32c(new Uint8Array(t.buffer, t.byteOffset, t.byteLength), ram);
      pages += t.length;
    }
    return { ram, state: this.#state, pages, sections: this.#sections };
  }
}

/**
 * Records what `pageCount` pages at `off` of `bytes` (one region) now hold into that region's
 * `table`, as {@linkcode MigrationDigest.recordRun} does; for Workers that hold only the tables.
 */
export function recordPages(
  table: Uint32Array,
  bytes: Uint8Array,
  off: number,
  pageCount: number,
  zero: boolean,
): void {
  const first = off / PAGE_SIZE;
  if (zero) {
    table.fill(ZERO_PAGE_CRC, first, first + pageCount);
    return;
  }
  const f = shim().ferry_crc32c;
  const b = bytes as Uint8Array<ArrayBuffer>;
  for (let p = 0; p < pageCount; p++) {
    const o = off + p * PAGE_SIZE;
    table[first + p] = f(b.subarray(o, o + PAGE_SIZE), PAGE, 0);
  }
}

/** Encodes the `digest` payload: u32 algorithm, u32 RAM digest, u32 state digest, u32 sections, u64 pages. */
export function encodeDigest(d: SwitchoverDigest): Uint8Array {
  const b = new Uint8Array(DIGEST_BYTES);
  const v = new DataView(b.buffer);
  v.setUint32(0, DIGEST_ALGORITHM_CRC32C_PAGES, true);
  v.setUint32(4, d.ram, true);
  v.setUint32(8, d.state, true);
  v.setUint32(12, d.sections, true);
  v.setBigUint64(16, BigInt(d.pages), true);
  return b;
}

/** Decodes the `digest` payload. */
export function decodeDigest(b: Uint8Array): SwitchoverDigest {
  if (b.length !== DIGEST_BYTES) {
    throw new ProtocolError(`Cannot decode digest: ${b.length} bytes, need ${DIGEST_BYTES}`);
  }
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const algorithm = v.getUint32(0, true);
  if (algorithm !== DIGEST_ALGORITHM_CRC32C_PAGES) {
    throw new ProtocolError(`Cannot decode digest: unknown algorithm ${algorithm}`);
  }
  const pages = v.getBigUint64(16, true);
  if (pages > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ProtocolError("Cannot decode digest: page count too big");
  }
  return {
    ram: v.getUint32(4, true),
    state: v.getUint32(8, true),
    sections: v.getUint32(12, true),
    pages: Number(pages),
  };
}

/**
 * Compares the source's digest with the destination's own.
 * @returns undefined when equal, else one line naming what differs
 */
export function compareDigests(source: SwitchoverDigest, here: SwitchoverDigest): string | undefined {
  const hex = (n: number) => `0x${n.toString(16).padStart(8, "0")}`;
  if (source.pages !== here.pages) {
    return `guest RAM digest covers ${source.pages} pages on the source, ${here.pages} here`;
  }
  if (source.ram !== here.ram) {
    return `guest RAM differs from the source's: digest ${hex(here.ram)} here, ${
      hex(source.ram)
    } on the source`;
  }
  if (source.sections !== here.sections || source.state !== here.state) {
    return `device and vCPU state differs from the source's: digest ${
      hex(here.state)
    } over ${here.sections} sections here, ${hex(source.state)} over ${source.sections} on the source`;
  }
  return undefined;
}
