/**
 * Post-copy payloads (message kinds in stream.ts): the bitmap of pages the destination still
 * lacks (`postcopyDirty`) and a page request (`pageRequest`). Little-endian, bounded, and the
 * decoders treat their input as hostile. Table: docs/migration.md "Post-copy".
 * @module
 */
import { ProtocolError } from "./stream.ts";

/** Bytes of a `pageRequest` payload: u64 gpa, u32 page count, u32 reserved (0). */
export const PAGE_REQUEST_BYTES = 16;
/** Most pages one request may ask for. */
export const MAX_REQUEST_PAGES = 512;

/**
 * Encodes per-region page bitmaps: u32 region count, then per region u32 word count and the
 * words (bit `p & 31` of word `p >> 5` = page `p` of that region).
 */
export function encodeDirtyBitmaps(bitmaps: readonly Uint32Array[]): Uint8Array {
  let bytes = 4;
  for (const b of bitmaps) bytes += 4 + b.length * 4;
  const out = new Uint8Array(bytes);
  const v = new DataView(out.buffer);
  v.setUint32(0, bitmaps.length, true);
  let o = 4;
  for (const b of bitmaps) {
    v.setUint32(o, b.length, true);
    o += 4;
    for (let i = 0; i < b.length; i++, o += 4) v.setUint32(o, b[i]!, true);
  }
  return out;
}

/**
 * Decodes {@linkcode encodeDirtyBitmaps} output and checks it against this VM's regions: the same
 * region count, one bit per page of each region, no bit past the region's end.
 * @param regionPages pages of each region of this VM
 * @throws {ProtocolError} naming the region
 */
export function decodeDirtyBitmaps(b: Uint8Array, regionPages: readonly number[]): Uint32Array[] {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (b.length < 4) throw new ProtocolError("Cannot decode the post-copy page bitmap: too short");
  const count = v.getUint32(0, true);
  if (count !== regionPages.length) {
    throw new ProtocolError(
      `Cannot accept the post-copy page bitmap: ${count} RAM regions, this VM has ${regionPages.length}`,
    );
  }
  const out: Uint32Array[] = [];
  let o = 4;
  for (let r = 0; r < count; r++) {
    const pages = regionPages[r]!;
    const words = Math.ceil(pages / 32);
    if (o + 4 > b.length || v.getUint32(o, true) !== words) {
      throw new ProtocolError(
        `Cannot accept the post-copy page bitmap: region ${r} must have ${words} words`,
      );
    }
    o += 4;
    if (o + words * 4 > b.length) {
      throw new ProtocolError(`Cannot decode the post-copy page bitmap: region ${r} is truncated`);
    }
    const bm = new Uint32Array(words);
    for (let i = 0; i < words; i++, o += 4) bm[i] = v.getUint32(o, true);
    const tail = pages % 32;
    if (tail !== 0 && (bm[words - 1]! >>> tail) !== 0) {
      throw new ProtocolError(`Cannot accept the post-copy page bitmap: region ${r} has bits past its end`);
    }
    out.push(bm);
  }
  if (o !== b.length) throw new ProtocolError("Cannot decode the post-copy page bitmap: trailing bytes");
  return out;
}

/** Encodes a request for `pageCount` pages from `gpa`. */
export function encodePageRequest(gpa: number, pageCount: number): Uint8Array {
  const out = new Uint8Array(PAGE_REQUEST_BYTES);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, BigInt(gpa), true);
  v.setUint32(8, pageCount, true);
  return out;
}

/**
 * Decodes a page request.
 * @throws {ProtocolError} for a bad length, count or reserved field
 */
export function decodePageRequest(b: Uint8Array): { gpa: number; pageCount: number } {
  if (b.length !== PAGE_REQUEST_BYTES) {
    throw new ProtocolError(`Cannot decode a page request of ${b.length} bytes: need ${PAGE_REQUEST_BYTES}`);
  }
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const gpa = v.getBigUint64(0, true);
  const pageCount = v.getUint32(8, true);
  if (pageCount === 0 || pageCount > MAX_REQUEST_PAGES || v.getUint32(12, true) !== 0) {
    throw new ProtocolError(`Cannot accept a page request for ${pageCount} pages`);
  }
  if (gpa > BigInt(Number.MAX_SAFE_INTEGER) || gpa % 4096n !== 0n) {
    throw new ProtocolError(`Cannot accept a page request at gpa 0x${gpa.toString(16)}`);
  }
  return { gpa: Number(gpa), pageCount };
}
