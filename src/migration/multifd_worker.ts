/**
 * One multifd channel's Worker (multifd.ts). Source: connects to the destination, sends
 * `channel(id, i)`, then writes the RAM messages the main thread queues, straight from its own
 * views of guest RAM, and `sync(n)` at the end of each pass. Destination: reads the accepted
 * socket's descriptor (non-blocking, epoll for the stall timeout), checks every run table
 * (ram.ts) and lands the pages straight into guest RAM; at `sync(n)` it stops until the main
 * thread says `go`.
 *
 * Messages are framed by stream.ts (`MessageWriter` / `MessageReader`), like the main connection.
 * @module
 */
import { hostGuestMemory, Populator, residency } from "../memory/host_memory.ts";
import type { MemoryLayout } from "../memory/guest_memory.ts";
import { Epoll, EPOLLIN } from "../sys/epoll.ts";
import { readFd } from "../sys/fd.ts";
import { connectMigration, parseMigrationUri, StallGuard } from "./transport.ts";
import {
  decodeReason,
  decodeRuns,
  HEADER_BYTES,
  MAX_REASON_BYTES,
  MessageReader,
  MessageWriter,
  ProtocolError,
  RAM_PREFIX_BYTES,
} from "./stream.ts";
import { landRawRun, landZeroRun, readRunTable } from "./ram.ts";
import { recordPages } from "./digest.ts";
import {
  CHANNEL_BYTES,
  decodeChannel,
  decodeSync,
  encodeChannel,
  encodeSync,
  SYNC_BYTES,
} from "./multifd.ts";

interface SourceInit {
  type: "init";
  role: "source";
  uri: string;
  layout: MemoryLayout;
  index: number;
  count: number;
  id: Uint8Array;
  stallMs: number;
  connectMs: number;
}

interface DestinationInit {
  type: "init";
  role: "destination";
  fd: number;
  layout: MemoryLayout;
  stallMs: number;
  populate: boolean;
  /** Switch-over digest tables (shared with the main thread). */
  tables: Uint32Array[];
}

type Incoming =
  | SourceInit
  | DestinationInit
  | { type: "batch"; table: Uint8Array; parts: number[] }
  | { type: "sync"; n: number }
  | { type: "digest"; tables: Uint32Array[] }
  | { type: "go" };

function post(m: unknown): void {
  self.postMessage(m);
}
function fail(e: unknown): void {
  post({ type: "error", message: (e as Error)?.message ?? String(e) });
}

let tail: Promise<void> = Promise.resolve();
let failed = false;
let goWaiter: (() => void) | undefined;
let goPending = 0;

self.onmessage = (e: MessageEvent<Incoming>) => {
  const m = e.data;
  if (m.type === "go") {
    if (goWaiter) {
      const w = goWaiter;
      goWaiter = undefined;
      w();
    } else goPending++;
    return;
  }
  if (m.type === "init" && m.role === "destination") {
    receive(m).catch((err) => fail(err));
    return;
  }
  // Source messages run in order, one at a time.
  tail = tail.then(async () => {
    if (failed) return;
    try {
      await sourceStep(m);
    } catch (err) {
      failed = true;
      fail(err);
    }
  });
};

// ---- source -----------------------------------------------------------------------------------

let writer: MessageWriter | undefined;
let views: Uint8Array[] = [];
let gpas: number[] = [];
let tables: Uint32Array[] | undefined;

async function sourceStep(m: Incoming): Promise<void> {
  if (m.type === "init" && m.role === "source") {
    let conn: Deno.Conn;
    try {
      const target = parseMigrationUri(m.uri);
      if (target.kind === "file") throw new TypeError("multifd needs a tcp: or unix: uri");
      conn = await connectMigration(target, { timeoutMs: m.connectMs });
    } catch (e) {
      throw new Error(`cannot connect: ${(e as Error).message}`);
    }
    const guard = new StallGuard(conn, { peer: "destination", writeTimeoutMs: m.stallMs });
    writer = new MessageWriter(guard);
    views = hostGuestMemory(m.layout).regions.map((r) => r.bytes);
    gpas = m.layout.regions.map((r) => r.gpa);
    await send("channel", encodeChannel({ id: m.id, index: m.index, count: m.count }));
    post({ type: "ready" });
    return;
  }
  if (m.type === "batch") {
    const parts: Uint8Array[] = [m.table];
    for (let i = 0; i < m.parts.length; i += 3) {
      const off = m.parts[i + 1]!;
      parts.push(views[m.parts[i]!]!.subarray(off, off + m.parts[i + 2]!));
    }
    await send("ram", ...parts);
    // Right after the write, as the single-connection sender records (digest.ts).
    if (tables) {
      for (const run of decodeRuns(m.table.subarray(RAM_PREFIX_BYTES))) {
        let ri = gpas.length - 1;
        while (ri > 0 && run.gpa < gpas[ri]!) ri--;
        recordPages(tables[ri]!, views[ri]!, run.gpa - gpas[ri]!, run.pageCount, run.zero);
      }
    }
    post({ type: "sent" });
    return;
  }
  if (m.type === "digest") {
    tables = m.tables;
    return;
  }
  if (m.type === "sync") {
    await send("sync", encodeSync(m.n));
    post({ type: "synced", n: m.n });
  }
}

async function send(kind: "channel" | "ram" | "sync", ...parts: Uint8Array[]): Promise<void> {
  try {
    await writer!.send(kind, ...parts);
  } catch (e) {
    if (e instanceof Deno.errors.BrokenPipe || e instanceof Deno.errors.ConnectionReset) {
      throw new Error(`the destination closed the connection (${(e as Error).message})`);
    }
    throw e;
  }
}

// ---- destination ------------------------------------------------------------------------------

const EAGAIN = 11;
/** Longest single epoll wait: a terminated Worker ends within this. */
const WAIT_SLICE_MS = 250;

/** Reads a non-blocking socket descriptor; a read that gets nothing for `stallMs` fails. */
class FdSource {
  #fd: number;
  #ep: Epoll;
  #stallMs: number;

  constructor(fd: number, stallMs: number) {
    this.#fd = fd;
    this.#stallMs = stallMs;
    this.#ep = new Epoll("the multifd channel's epoll set", 1);
    try {
      this.#ep.add(fd, EPOLLIN, 0n, "the channel socket");
    } catch (e) {
      this.#ep.close();
      throw e;
    }
  }

  read(p: Uint8Array): Promise<number | null> {
    let waited = 0;
    for (;;) {
      const n = readFd(this.#fd, p);
      if (n > 0) return Promise.resolve(n);
      if (n === 0) return Promise.resolve(null);
      if (n !== -EAGAIN) return Promise.reject(new Error(`cannot read from the source: errno ${-n}`));
      if (this.#stallMs > 0 && waited >= this.#stallMs) {
        return Promise.reject(
          new Error(`the connection stalled: received nothing from the source for ${this.#stallMs / 1000} s`),
        );
      }
      const slice = this.#stallMs > 0 ? Math.min(WAIT_SLICE_MS, this.#stallMs - waited) : WAIT_SLICE_MS;
      const t0 = performance.now();
      this.#ep.wait(Math.max(1, Math.ceil(slice)));
      waited += performance.now() - t0;
    }
  }

  close(): void {
    this.#ep.close();
  }
}

async function receive(m: DestinationInit): Promise<void> {
  const src = new FdSource(m.fd, m.stallMs);
  try {
    const reader = new MessageReader(src, "source");
    const memory = hostGuestMemory(m.layout);
    const populator = m.populate ? new Populator(m.layout) : undefined;
    const land = {
      residency: (gpa: number, n: number) => residency(m.layout, gpa, n),
      ...(populator ? { populate: (gpa: number, n: number) => populator.ahead(gpa, n) } : {}),
    };
    let h = await reader.readHeader();
    if (!h) throw new ProtocolError("the source closed the connection before 'channel'");
    if (h.kind !== "channel") throw new ProtocolError(`expected 'channel' first, got '${h.kind}'`);
    const hello = decodeChannel(await reader.readPayload(h, CHANNEL_BYTES));
    post({ type: "hello", ...hello });
    for (;;) {
      h = await reader.readHeader();
      if (!h) throw new ProtocolError("the source closed the connection");
      if (h.kind === "ram") {
        const runs = await readRunTable(reader, h, memory);
        let zeroPages = 0;
        let rawPages = 0;
        for (let i = 0; i < runs.length; i++) {
          const run = runs[i]!;
          if (run.zero) {
            landZeroRun(run, land);
            zeroPages += run.pageCount;
          } else {
            await landRawRun(reader, run, land);
            rawPages += run.pageCount;
          }
          const table = m.tables[memory.regions.indexOf(run.region)]!;
          recordPages(table, run.region.bytes, run.off, run.pageCount, run.zero);
        }
        post({ type: "landed", zeroPages, rawPages, bytes: HEADER_BYTES + h.length });
        continue;
      }
      if (h.kind === "sync") {
        post({ type: "synced", n: decodeSync(await reader.readPayload(h, SYNC_BYTES)) });
        if (goPending > 0) goPending--;
        else await new Promise<void>((resolve) => (goWaiter = resolve));
        continue;
      }
      if (h.kind === "cancel") {
        throw new Error(
          `canceled by the source: ${decodeReason(await reader.readPayload(h, MAX_REASON_BYTES))}`,
        );
      }
      throw new ProtocolError(`unexpected '${h.kind}' message on a multifd channel`);
    }
  } finally {
    src.close();
  }
}
