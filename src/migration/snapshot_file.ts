/**
 * The `file:` transport: a snapshot is the byte stream a live migration sends (stream.ts framing,
 * unchanged), written to a file, followed by a 24-byte end record:
 *
 * | offset from end | size | field                                        |
 * |----------------:|-----:|----------------------------------------------|
 * | −24             | 8    | magic `"FERRYEND"`                           |
 * | −16             | 8    | body length: bytes before the record (u64)  |
 * | −8              | 4    | CRC32C of the body (u32)                     |
 * | −4              | 4    | reserved, 0                                  |
 *
 * A file has no peer, so migration is one-way here: the writer waits for no `ack` or `resumed`,
 * and the reader checks the configuration and the switch-over digest itself against what the file
 * carries. Beneath the framing, this module guards the file as a whole (as Firecracker's snapshot
 * CRC does): the writer writes `PATH.partial` and renames it to `PATH` only after the end record
 * is written and synced, so a failed or canceled snapshot never leaves a file that looks complete;
 * the reader refuses a file without an end record (truncated), of the wrong length, or whose body
 * does not match its CRC — checked as the last body byte is read, before the guest can run.
 * @module
 */
import { crc32c } from "./digest.ts";

/** `"FERRYEND"`. */
export const END_MAGIC: Uint8Array = new TextEncoder().encode("FERRYEND");
/** Bytes of the end record. */
export const END_RECORD_BYTES = 24;

/** Bytes copied out of guest RAM per write (see {@linkcode SnapshotFileSink.write}). */
const STAGING_BYTES = 4 * 1024 * 1024;

/** A snapshot file that is truncated, corrupted or not a ferry snapshot. */
export class SnapshotFileError extends Error {
  override name = "SnapshotFileError";
}

/** The temporary name a snapshot is written under until it is complete. */
export function partialPath(path: string): string {
  return `${path}.partial`;
}

/** Encodes the end record of a body of `length` bytes with CRC32C `crc`. */
export function encodeEndRecord(length: number, crc: number): Uint8Array {
  const b = new Uint8Array(END_RECORD_BYTES);
  b.set(END_MAGIC, 0);
  const v = new DataView(b.buffer);
  v.setBigUint64(8, BigInt(length), true);
  v.setUint32(16, crc >>> 0, true);
  return b;
}

/**
 * Decodes an end record found at the end of a file of `fileSize` bytes.
 * @throws {SnapshotFileError} when it is missing or names another length
 */
export function decodeEndRecord(b: Uint8Array, fileSize: number): { length: number; crc: number } {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const magicOk = b.length === END_RECORD_BYTES && END_MAGIC.every((x, i) => b[i] === x);
  if (!magicOk || v.getUint32(20, true) !== 0) {
    throw new SnapshotFileError(
      "the file is truncated or not a ferry snapshot (no end record; was the snapshot completed?)",
    );
  }
  const length = v.getBigUint64(8, true);
  if (length !== BigInt(fileSize - END_RECORD_BYTES)) {
    throw new SnapshotFileError(
      `the file is damaged: its end record counts ${length} bytes before it, the file has ${
        fileSize - END_RECORD_BYTES
      }`,
    );
  }
  return { length: Number(length), crc: v.getUint32(16, true) };
}

/**
 * The writing end of a snapshot (the source's connection): bytes go to `PATH.partial`;
 * {@linkcode commit} seals and renames it, {@linkcode close} without a commit removes it.
 * Nothing is ever read from it.
 */
export class SnapshotFileSink {
  readonly path: string;
  #file: Deno.FsFile;
  #crc = 0;
  #length = 0;
  #committed = false;
  #closed = false;
  #staging = new Uint8Array(STAGING_BYTES);

  private constructor(path: string, file: Deno.FsFile) {
    this.path = path;
    this.#file = file;
  }

  /**
   * Creates (or truncates) `PATH.partial`; `PATH` itself is untouched until {@linkcode commit}.
   * @throws {Error} naming the file (missing directory, permissions)
   */
  static async create(path: string): Promise<SnapshotFileSink> {
    try {
      const file = await Deno.open(partialPath(path), {
        write: true,
        create: true,
        truncate: true,
        mode: 0o600,
      });
      return new SnapshotFileSink(path, file);
    } catch (e) {
      throw new Error(`Cannot create snapshot file '${partialPath(path)}': ${(e as Error).message}`, {
        cause: e,
      });
    }
  }

  /** Bytes written so far (the body). */
  get length(): number {
    return this.#length;
  }

  /**
   * Writes some of `p` (the stream writer loops until all is written). `p` may be a view of
   * guest RAM that a running guest changes meanwhile, so the bytes are copied once and the copy
   * is both written and summed: the CRC covers exactly what the file holds.
   */
  async write(p: Uint8Array): Promise<number> {
    if (this.#closed) throw new Deno.errors.BadResource(`snapshot file '${this.path}' is closed`);
    const chunk = this.#staging.subarray(0, Math.min(p.length, this.#staging.length));
    chunk.set(p.subarray(0, chunk.length));
    const n = await this.#file.write(chunk);
    this.#crc = crc32c(chunk.subarray(0, n), this.#crc);
    this.#length += n;
    return n;
  }

  /** A snapshot has no peer: nothing ever answers. */
  read(_p: Uint8Array): Promise<number | null> {
    return Promise.reject(new Error("Cannot read from a snapshot file being written: it has no peer"));
  }

  /**
   * Appends the end record, syncs the data and renames `PATH.partial` to `PATH`.
   * @throws {Error} naming the file; the partial file is removed then
   */
  async commit(): Promise<void> {
    try {
      const record = encodeEndRecord(this.#length, this.#crc);
      let off = 0;
      while (off < record.length) off += await this.#file.write(record.subarray(off));
      await this.#file.syncData();
      this.#file.close();
      this.#closed = true;
      await Deno.rename(partialPath(this.path), this.path);
      this.#committed = true;
    } catch (e) {
      this.close();
      throw new Error(`Cannot complete snapshot file '${this.path}': ${(e as Error).message}`, { cause: e });
    }
  }

  /** Closes; without a {@linkcode commit}, removes the partial file. Idempotent. */
  close(): void {
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.#file.close();
      } catch { /* already closed */ }
    }
    if (!this.#committed) {
      try {
        Deno.removeSync(partialPath(this.path));
      } catch { /* gone already */ }
    }
  }
}

/**
 * The reading end of a snapshot (the destination's connection): yields the body and ends at the
 * end record. The body's CRC32C is checked when its last byte is read; a mismatch fails that
 * read, so a corrupted file never completes a restore. Writes are refused: nothing answers a file.
 */
export class SnapshotFileSource {
  readonly path: string;
  #file: Deno.FsFile;
  #length: number;
  #want: number;
  #crc = 0;
  #pos = 0;
  #closed = false;

  private constructor(path: string, file: Deno.FsFile, length: number, crc: number) {
    this.path = path;
    this.#file = file;
    this.#length = length;
    this.#want = crc;
  }

  /**
   * Opens `path` and checks its end record (so a truncated file is refused before anything is read).
   * @throws {SnapshotFileError} truncated or not a snapshot; {Error} `cannot open it: …` (the caller names the file)
   */
  static async open(path: string): Promise<SnapshotFileSource> {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      throw new Error(`cannot open it: ${(e as Error).message}`, { cause: e });
    }
    try {
      const size = (await file.stat()).size;
      if (size < END_RECORD_BYTES) {
        throw new SnapshotFileError(`the file is truncated or not a ferry snapshot (${size} bytes)`);
      }
      await file.seek(size - END_RECORD_BYTES, Deno.SeekMode.Start);
      const record = new Uint8Array(END_RECORD_BYTES);
      let off = 0;
      while (off < record.length) {
        const n = await file.read(record.subarray(off));
        if (n === null) break;
        off += n;
      }
      const { length, crc } = decodeEndRecord(record.subarray(0, off), size);
      await file.seek(0, Deno.SeekMode.Start);
      return new SnapshotFileSource(path, file, length, crc);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** Body bytes (the stream, without the end record). */
  get length(): number {
    return this.#length;
  }

  /**
   * Reads body bytes; `null` at the end record.
   * @throws {SnapshotFileError} when the last body byte is read and the CRC does not match
   */
  async read(p: Uint8Array): Promise<number | null> {
    const left = this.#length - this.#pos;
    if (left === 0) return null;
    const n = await this.#file.read(left < p.length ? p.subarray(0, left) : p);
    if (n === null) {
      throw new SnapshotFileError("the file ended before its end record (it shrank while being read)");
    }
    this.#crc = crc32c(p.subarray(0, n), this.#crc);
    this.#pos += n;
    if (this.#pos === this.#length) this.#check();
    return n;
  }

  /** Nothing answers a file: a writer must not try. */
  write(_p: Uint8Array): Promise<number> {
    return Promise.reject(new Error("Cannot write to a snapshot file being read: it has no peer"));
  }

  /**
   * After a failed restore: reads the rest of the body and says whether the file is corrupted
   * (then that is the real reason, not what the stream parser tripped on). `undefined`: the CRC
   * matches, or the file cannot be read further.
   */
  async corruption(): Promise<string | undefined> {
    if (this.#closed) return undefined;
    const buf = new Uint8Array(1 << 20);
    try {
      while (this.#pos < this.#length) {
        if ((await this.read(buf)) === null) break;
      }
    } catch (e) {
      if (e instanceof SnapshotFileError) return e.message;
    }
    return undefined;
  }

  #check(): void {
    const got = this.#crc >>> 0;
    if (got !== this.#want) {
      throw new SnapshotFileError(
        `the file is corrupted: CRC32C of its ${this.#length} bytes is 0x${hex(got)}, the end record says 0x${
          hex(this.#want)
        }`,
      );
    }
  }

  /** Closes the file. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#file.close();
    } catch { /* already closed */ }
  }
}

function hex(n: number): string {
  return n.toString(16).padStart(8, "0");
}
