/**
 * What the migration wire format is made of: the protocol version, the header layout, the message
 * kinds with their payload bounds ({@linkcode PAYLOAD_BYTES}), the RAM run layout, and the error
 * type for bad input. Framing is in `stream.ts`, payload codecs in `messages.ts`; the table and
 * diagram are in docs/migration.md.
 * @module
 */

/** Wire protocol version this ferry writes. */
export const PROTOCOL_VERSION = 2;
/** Oldest wire protocol version this ferry reads (version 1 had no sequence numbers nor CRC). */
export const MIN_PROTOCOL_VERSION = 2;
/** `"FERRYMIG"`. */
export const MAGIC: Uint8Array = new TextEncoder().encode("FERRYMIG");
/** Bytes in every message header. */
export const HEADER_BYTES = 32;
/** Offset of the u64 payload length in the header. */
export const HEADER_LENGTH_OFFSET = 16;
/** Offset of the u32 sequence number in the header. */
export const HEADER_SEQ_OFFSET = 24;
/** Offset of the u32 CRC32C in the header. */
export const HEADER_CRC_OFFSET = 28;
/** Largest payload of any message. */
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
/** Largest section payload. */
export const MAX_SECTION_BYTES = 16 * 1024 * 1024;
/** Longest section id in UTF-8 bytes. */
export const MAX_SECTION_ID_BYTES = 256;
/** Most sections in one migration. */
export const MAX_SECTIONS = 4096;
/** Largest config message (JSON). */
export const MAX_CONFIG_BYTES = 1024 * 1024;
/** Longest nack/cancel reason and hello product string. */
export const MAX_REASON_BYTES = 4096;
/** Most runs in one RAM message. */
export const MAX_RUNS_PER_MESSAGE = 8192;
/** Page size on the wire. */
export const WIRE_PAGE_SIZE = 4096;
/** Bytes of the RAM message prefix: u32 run count + u32 reserved. */
export const RAM_PREFIX_BYTES = 8;
/** Bytes per run in a RAM message: u64 gpa, u32 page count, u32 flags. */
export const RUN_BYTES = 16;
/** Run flag: the pages are all zero; no bytes follow for this run. */
export const RUN_ZERO = 1;

/** Message kinds (u16 on the wire). */
export const MessageKind = {
  /** S→D first message: page size, product version. */
  hello: 1,
  /** S→D: JSON `{config, host}` attributes. */
  config: 2,
  /** D→S: configuration accepted. */
  ack: 3,
  /** D→S: refused or failed; payload is the reason (UTF-8). */
  nack: 4,
  /** S→D: a batch of page runs. */
  ram: 5,
  /** S→D: one state section. */
  state: 6,
  /** S→D: all sent; payload is the section count (u32). */
  complete: 7,
  /** Either way: the sender gives up; payload is the reason (UTF-8). */
  cancel: 8,
  /** D→S: the guest runs on the destination. */
  resumed: 9,
  /** S→D, after the last `state`: the switch-over digest of RAM and state (digest.ts). */
  digest: 10,
  // Post-copy (postcopy_wire.ts).
  /** S→D after `ack`: the source may switch to post-copy (capability `postcopy-ram`). */
  postcopyAdvise: 11,
  /** S→D at the switch: the bitmap of pages the destination still lacks. */
  postcopyDirty: 12,
  /** D→S during post-copy: send these pages first (u64 gpa, u32 page count). */
  pageRequest: 13,
  /** S→D: every page of `postcopyDirty` was sent. */
  postcopyEnd: 14,
  /** D→S: every page landed; the source may let go. */
  postcopyDone: 15,
  /** S→D, first on a multifd channel (and on the main one): migration id and channel index (multifd.ts). */
  channel: 16,
  /** S→D on every multifd channel and then the main one: the end of a pass (u32 sync count). */
  sync: 17,
} as const;
/** A message kind name. */
export type MessageKindName = keyof typeof MessageKind;
/** Kind codes to names (decoding). */
export const KIND_NAMES: ReadonlyMap<number, MessageKindName> = new Map<number, MessageKindName>(
  Object.entries(MessageKind).map(([k, v]) => [v, k as MessageKindName]),
);

/** Bytes of the `digest` payload (digest.ts encodes it). */
export const DIGEST_PAYLOAD_BYTES = 24;

/**
 * Payload bytes each message kind may carry, checked when a header is decoded (before anything is
 * read or allocated): `[min, max]`.
 */
export const PAYLOAD_BYTES: Readonly<Record<MessageKindName, readonly [number, number]>> = {
  hello: [6, 6 + MAX_REASON_BYTES],
  config: [0, MAX_CONFIG_BYTES],
  ack: [0, 0],
  nack: [0, MAX_REASON_BYTES],
  ram: [RAM_PREFIX_BYTES + RUN_BYTES, MAX_MESSAGE_BYTES],
  state: [2 + 1 + 8, 2 + MAX_SECTION_ID_BYTES + 8 + MAX_SECTION_BYTES],
  complete: [4, 4],
  cancel: [0, MAX_REASON_BYTES],
  resumed: [0, 0],
  digest: [DIGEST_PAYLOAD_BYTES, DIGEST_PAYLOAD_BYTES],
  postcopyAdvise: [0, 0],
  // u32 region count, then per region u32 words and the words (postcopy_wire.ts).
  postcopyDirty: [4, MAX_MESSAGE_BYTES],
  // u64 gpa, u32 page count, u32 reserved (postcopy_wire.ts PAGE_REQUEST_BYTES).
  pageRequest: [16, 16],
  postcopyEnd: [0, 0],
  postcopyDone: [0, 0],
  // multifd.ts: 16-byte migration id, u16 index, u16 count (CHANNEL_BYTES); u32 sync number (SYNC_BYTES).
  channel: [20, 20],
  sync: [4, 4],
};

/** Bytes of a whole message (header and payload) with `payloadBytes` of payload. */
export function messageBytes(payloadBytes: number): number {
  return HEADER_BYTES + payloadBytes;
}

/** Thrown for malformed, hostile or truncated input from the peer. */
export class ProtocolError extends Error {
  override name = "ProtocolError";
}

/** A decoded header. */
export interface MessageHeader {
  version: number;
  kind: MessageKindName;
  flags: number;
  /** Payload bytes that follow (already checked against {@linkcode PAYLOAD_BYTES}). */
  length: number;
  /** Sequence number: the message's index on its connection, from 0. */
  seq: number;
  /** CRC32C of the header (with this field 0) and the payload, as sent. */
  crc: number;
}

/** One run of pages in a RAM message. */
export interface RamRun {
  gpa: number;
  pageCount: number;
  /** True for a zero run (no bytes follow). */
  zero: boolean;
}
