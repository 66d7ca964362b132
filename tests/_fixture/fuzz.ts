/**
 * The migration-stream fuzzer shared by `tests/migration_fuzz_test.ts` (bounded) and
 * `scripts/fuzz_migration.ts` (long runs): capture one real ferry migration stream of a small
 * guest, mutate it in many ways by class, and feed each mutation to a destination.
 *
 * Two destinations:
 * - {@linkcode InProcessDestination}: ferry's real receive code (`receiveMigration`) into a real
 *   KVM VM built from the same command line, reused across cases; only `resume()` is replaced by a
 *   counter, so "the VM would run" is observable without running it. Hundreds of cases a second.
 * - {@linkcode feedFerry}: a real `ferry ... -incoming unix:PATH` process per case.
 * @module
 */
import { Ferry, PROBE, probeArgs, ROOT, tempDir, waitIncoming } from "./ferry.ts";
import {
  HEADER_BYTES,
  HEADER_LENGTH_OFFSET,
  MessageKind,
  RAM_PREFIX_BYTES,
  RUN_BYTES,
} from "../../src/migration/stream.ts";
import { parseMessages, startTap, type WireMessage } from "./stream_tap.ts";
import { parseArgs } from "../../src/config/parse_args.ts";
import { vmmOptions } from "../../src/vmm/run.ts";
import { Vm } from "../../src/machine/vm.ts";
import { VmMigrationAdapter } from "../../src/vmm/migration_adapter.ts";
import {
  MigrationStatusTracker,
  type MigrationVm,
  receiveMigration,
  type Section,
} from "../../src/migration/mod.ts";
import { crc32c } from "../../src/migration/digest.ts";

export { PROBE, ROOT };

/** The guest whose stream is captured: small, with pages rewritten all the time (several passes). */
export const FUZZ_APPEND = "mode=pattern mib=2 interval_ms=50";
/** Its memory size. */
export const FUZZ_MEM = "128M";

/** The command line of the captured source and of every destination (minus -incoming, -qmp). */
export function fuzzArgs(): string[] {
  return probeArgs({ append: FUZZ_APPEND, mem: FUZZ_MEM, smp: 1 });
}

/** A captured stream and its messages. */
export interface Capture {
  bytes: Uint8Array;
  messages: WireMessage[];
  /** The destination's configuration attributes as the source sent them (its `config` message). */
  config: Record<string, string>;
}

/**
 * Migrates a real source ferry to a real destination ferry through a recording proxy.
 * @throws when the migration does not complete
 */
export async function captureStream(): Promise<Capture> {
  const dir = tempDir();
  const srcQmp = `${dir}/src.qmp`;
  const dstQmp = `${dir}/dst.qmp`;
  const src = new Ferry(probeArgs({ append: FUZZ_APPEND, mem: FUZZ_MEM, qmp: srcQmp }), { qmpPath: srcQmp });
  const dst = new Ferry(
    probeArgs({
      append: FUZZ_APPEND,
      mem: FUZZ_MEM,
      qmp: dstQmp,
      extra: ["-incoming", `unix:${dir}/dst.sock`],
    }),
    { qmpPath: dstQmp },
  );
  const tap = startTap(`${dir}/tap.sock`, `${dir}/dst.sock`);
  try {
    const sq = await src.qmp();
    const dq = await dst.qmp();
    await waitIncoming(dq);
    await src.waitLine(/PROBE VERIFY ok round=/);
    await sq.call("migrate", { uri: tap.uri });
    for (const deadline = Date.now() + 30000;;) {
      const r = await sq.call("query-migrate") as { status: string; "error-desc"?: string };
      if (r.status === "completed") break;
      if (r.status === "failed" || Date.now() > deadline) {
        throw new Error(
          `capture migration ${r.status}: ${r["error-desc"] ?? ""}\n${src.transcript()}${dst.transcript()}`,
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    await dst.waitLine(/PROBE VERIFY ok round=/);
    await sq.close();
    await dq.close();
  } finally {
    tap.close();
    await src.kill();
    await dst.kill();
    Deno.removeSync(dir, { recursive: true });
  }
  const bytes = tap.captured();
  const messages = parseMessages(bytes);
  const cfg = messages.find((m) => m.kind === MessageKind.config)!;
  const json = JSON.parse(
    new TextDecoder().decode(
      bytes.subarray(cfg.offset + HEADER_BYTES, cfg.offset + HEADER_BYTES + cfg.length),
    ),
  );
  return { bytes, messages, config: json.config };
}

/** Mutation classes. */
export const FUZZ_CLASSES = [
  "ram-byte",
  "ram-bit",
  "ram-superseded-copy",
  "state",
  "header",
  "run-table",
  "digest",
  "truncate",
  "duplicate",
  "remove",
  "reorder",
  "huge-length",
  "garbage",
  "stall",
] as const;
/** A mutation class. */
export type FuzzClass = typeof FUZZ_CLASSES[number];

/** Cases per class in one round (the bounded test runs one round: 228 cases). */
export const CASES_PER_CLASS: Record<FuzzClass, number> = {
  "ram-byte": 25,
  "ram-bit": 25,
  "ram-superseded-copy": 10,
  state: 25,
  header: 25,
  "run-table": 15,
  digest: 8,
  truncate: 20,
  duplicate: 15,
  remove: 15,
  reorder: 15,
  "huge-length": 12,
  garbage: 15,
  stall: 3,
};

/** One mutated stream. */
export interface FuzzCase {
  klass: FuzzClass;
  /** What was done, e.g. `flip bit 3 of byte 1234 (message 7, ram)`. */
  what: string;
  bytes: Uint8Array;
  /** Keep the connection open after the bytes (a stall). */
  stall: boolean;
}

/** A small seeded PRNG (xorshift32). */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = (seed >>> 0) || 1;
  }
  next(): number {
    let x = this.#s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#s = x >>> 0;
    return this.#s;
  }
  below(n: number): number {
    return this.next() % Math.max(n, 1);
  }
  pick<T>(a: readonly T[]): T {
    return a[this.below(a.length)]!;
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** A raw page in the stream: where its bytes are, and whether a later message sends it again. */
interface RawPage {
  message: number;
  /** Stream offset of its 4096 bytes. */
  at: number;
  superseded: boolean;
}

/** Messages' bytes, with their raw pages for the superseded analysis. */
class Stream {
  readonly bytes: Uint8Array;
  readonly messages: WireMessage[];
  /** Per RAM message index: the byte range of its run table. */
  readonly ram = new Map<number, { tableStart: number; start: number }>();
  readonly pages: RawPage[] = [];

  constructor(c: Capture) {
    this.bytes = c.bytes;
    this.messages = c.messages;
    const lastSent = new Map<number, number>();
    const raw: { message: number; at: number; page: number }[] = [];
    c.messages.forEach((m, i) => {
      if (m.kind !== MessageKind.ram) return;
      const v = new DataView(c.bytes.buffer, c.bytes.byteOffset + m.offset + HEADER_BYTES, m.length);
      const runs = v.getUint32(0, true);
      let at = m.offset + HEADER_BYTES + RAM_PREFIX_BYTES + runs * RUN_BYTES;
      this.ram.set(i, { tableStart: m.offset + HEADER_BYTES, start: at });
      for (let r = 0; r < runs; r++) {
        const run = RAM_PREFIX_BYTES + r * RUN_BYTES;
        const gpa = Number(v.getBigUint64(run, true));
        const n = v.getUint32(run + 8, true);
        const zero = v.getUint32(run + 12, true) === 1;
        for (let p = 0; p < n; p++) {
          const page = gpa / 4096 + p;
          lastSent.set(page, i);
          if (!zero) {
            raw.push({ message: i, at, page });
            at += 4096;
          }
        }
      }
    });
    for (const r of raw) {
      this.pages.push({ message: r.message, at: r.at, superseded: lastSent.get(r.page)! > r.message });
    }
  }

  message(i: number): Uint8Array {
    const m = this.messages[i]!;
    return this.bytes.subarray(m.offset, m.offset + HEADER_BYTES + m.length);
  }

  indexes(kind: number): number[] {
    return this.messages.flatMap((m, i) => (m.kind === kind ? [i] : []));
  }

  /** The stream with message list `order` (indexes, repeats allowed). */
  assemble(order: number[]): Uint8Array {
    return concat(order.map((i) => this.message(i)));
  }
}

/** Makes `perClass[k]` cases of every class from `capture`, deterministic for `seed`. */
export function* makeCases(capture: Capture, seed: number, perClass = CASES_PER_CLASS): Generator<FuzzCase> {
  const s = new Stream(capture);
  const rng = new Rng(seed);
  const all = s.messages.map((_, i) => i);
  const finalPages = s.pages.filter((p) => !p.superseded);
  const supersededPages = s.pages.filter((p) => p.superseded);
  const states = s.indexes(MessageKind.state);
  const digest = s.indexes(MessageKind.digest);
  const flip = (at: number, mask: number, klass: FuzzClass, what: string): FuzzCase => {
    const b = s.bytes.slice();
    b[at]! ^= mask;
    return { klass, what: `${what}: xor 0x${mask.toString(16)} at byte ${at}`, bytes: b, stall: false };
  };
  const inPage = (list: RawPage[]) => {
    const p = rng.pick(list);
    return { i: p.message, at: p.at + rng.below(4096) };
  };
  for (const klass of FUZZ_CLASSES) {
    for (let n = 0; n < perClass[klass]; n++) {
      switch (klass) {
        case "ram-byte": {
          const { i, at } = inPage(finalPages);
          yield flip(at, 1 + rng.below(255), klass, `page byte of message ${i} (ram, last copy of the page)`);
          break;
        }
        case "ram-bit": {
          const { i, at } = inPage(finalPages);
          yield flip(at, 1 << rng.below(8), klass, `page bit of message ${i} (ram, last copy of the page)`);
          break;
        }
        case "ram-superseded-copy": {
          if (supersededPages.length === 0) break;
          const { i, at } = inPage(supersededPages);
          yield flip(
            at,
            1 << rng.below(8),
            klass,
            `page bit of message ${i} (ram, the page is sent again later)`,
          );
          break;
        }
        case "state": {
          const i = rng.pick(states);
          const m = s.messages[i]!;
          const at = m.offset + HEADER_BYTES + rng.below(m.length);
          yield flip(at, n % 2 === 0 ? 1 << rng.below(8) : 1 + rng.below(255), klass, `message ${i} (state)`);
          break;
        }
        case "header": {
          const i = rng.pick(all);
          const m = s.messages[i]!;
          // magic, version, kind, flags, length, sequence number, CRC: any header byte.
          const at = m.offset + rng.below(HEADER_BYTES);
          yield flip(
            at,
            n % 2 === 0 ? 1 << rng.below(8) : 1 + rng.below(255),
            klass,
            `header of message ${i}`,
          );
          break;
        }
        case "run-table": {
          const i = rng.pick([...s.ram.keys()]);
          const r = s.ram.get(i)!;
          const at = r.tableStart + rng.below(r.start - r.tableStart);
          yield flip(at, 1 << rng.below(8), klass, `run table of message ${i} (ram)`);
          break;
        }
        case "digest": {
          const i = rng.pick(digest);
          const m = s.messages[i]!;
          yield flip(
            m.offset + HEADER_BYTES + rng.below(m.length),
            1 << rng.below(8),
            klass,
            `message ${i} (digest)`,
          );
          break;
        }
        case "truncate": {
          const cut = n % 3 === 0
            ? s.messages[rng.below(s.messages.length)]!.offset
            : rng.below(s.bytes.length);
          yield ({ klass, what: `cut at byte ${cut}`, bytes: s.bytes.slice(0, cut), stall: false });
          break;
        }
        case "duplicate": {
          const i = 2 + rng.below(s.messages.length - 2);
          const order = [...all.slice(0, i + 1), i, ...all.slice(i + 1)];
          yield ({
            klass,
            what: `message ${i} (kind ${s.messages[i]!.kind}) twice`,
            bytes: s.assemble(order),
            stall: false,
          });
          break;
        }
        case "remove": {
          const i = rng.below(s.messages.length);
          const order = all.filter((x) => x !== i);
          yield ({
            klass,
            what: `message ${i} (kind ${s.messages[i]!.kind}) removed`,
            bytes: s.assemble(order),
            stall: false,
          });
          break;
        }
        case "reorder": {
          const i = rng.below(s.messages.length - 1);
          const j = i + 1 + rng.below(Math.min(4, s.messages.length - 1 - i));
          const order = all.slice();
          [order[i], order[j]] = [order[j]!, order[i]!];
          yield ({ klass, what: `messages ${i} and ${j} swapped`, bytes: s.assemble(order), stall: false });
          break;
        }
        case "huge-length": {
          const i = rng.pick(all);
          const m = s.messages[i]!;
          const b = s.bytes.slice();
          const v = new DataView(b.buffer);
          const huge = rng.pick([
            2n ** 63n,
            2n ** 40n,
            64n * 1024n * 1024n + 1n,
            0xffff_ffffn,
            2n ** 64n - 1n,
          ]);
          // The header's length, or a length inside the payload (run page count, section length).
          if (n % 3 === 2 && m.kind === MessageKind.ram) {
            v.setUint32(m.offset + HEADER_BYTES + RAM_PREFIX_BYTES + 8, 0xffff_ffff, true);
            yield ({ klass, what: `page count 0xffffffff in message ${i}`, bytes: b, stall: false });
          } else {
            v.setBigUint64(m.offset + HEADER_LENGTH_OFFSET, huge, true);
            yield ({ klass, what: `length ${huge} in message ${i}`, bytes: b, stall: false });
          }
          break;
        }
        case "garbage": {
          const len = 1 + rng.below(1 << (4 + rng.below(14)));
          const junk = new Uint8Array(len).map(() => rng.next() & 0xff);
          const at = n % 3 === 0 ? 0 : s.messages[1 + rng.below(s.messages.length - 1)]!.offset;
          const tail = n % 3 === 2 ? s.bytes.subarray(at) : new Uint8Array(0);
          yield ({
            klass,
            what: `${len} random bytes at ${at}${tail.length ? " before the rest" : ""}`,
            bytes: concat([s.bytes.subarray(0, at), junk, tail]),
            stall: false,
          });
          break;
        }
        case "stall": {
          const cut = n === 0
            ? s.messages[2]!.offset
            : s.messages[s.messages.length - 1]!.offset - rng.below(1000);
          yield ({
            klass,
            what: `the first ${cut} bytes, then silence`,
            bytes: s.bytes.slice(0, cut),
            stall: true,
          });
          break;
        }
      }
    }
  }
}

/** What a destination did with one case. */
export interface FuzzOutcome {
  /** The destination would have run the guest (resume was called / the process ran it). */
  ran: boolean;
  /**
   * When it ran in-process: CRC32C of all guest RAM and of the restored sections, to compare with
   * the unmutated stream's.
   */
  ramCrc?: number;
  stateCrc?: number;
  /** Its error, when it refused. */
  error?: string;
}

/** Writes `bytes` to a unix socket, then half-closes (or not, for a stall); drains replies. */
async function feedSocket(
  path: string,
  bytes: Uint8Array,
  stall: boolean,
  until: Promise<unknown>,
): Promise<void> {
  let conn: Deno.Conn | undefined;
  for (const deadline = Date.now() + 10000;;) {
    try {
      conn = await Deno.connect({ transport: "unix", path });
      break;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  const c = conn;
  const drain = (async () => {
    const buf = new Uint8Array(65536);
    try {
      while ((await c.read(buf)) !== null) { /* replies */ }
    } catch { /* reset */ }
  })();
  try {
    let o = 0;
    while (o < bytes.length) o += await c.write(bytes.subarray(o));
    if (!stall) await c.closeWrite();
  } catch { /* the destination hung up first */ }
  await until.catch(() => {});
  try {
    c.close();
  } catch { /* closed */ }
  await drain;
}

/**
 * ferry's receive code into a real KVM VM built from {@linkcode fuzzArgs}, reused for every case.
 * Only `resume()` is replaced (it counts), so a case "runs the VM" when the real code resumes.
 */
export class InProcessDestination {
  #vm: Vm;
  #port: MigrationVm;
  #count = { resumed: 0, restored: [] as Section[] };
  #dir = tempDir();
  #n = 0;

  private constructor(vm: Vm, config: Record<string, string>) {
    this.#vm = vm;
    const adapter = new VmMigrationAdapter(vm, { configAttributes: () => config });
    const count = this.#count;
    this.#port = {
      get memory() {
        return adapter.memory;
      },
      configAttributes: () => adapter.configAttributes(),
      hostAttributes: () => adapter.hostAttributes(),
      startDirtyLog: () => adapter.startDirtyLog(),
      syncDirtyLog: () => adapter.syncDirtyLog(),
      stopDirtyLog: () => adapter.stopDirtyLog(),
      pause: () => Promise.resolve(),
      resumeAfterRollback: () => Promise.resolve(),
      startIncomingGuest() {
        count.resumed++;
        return Promise.resolve();
      },
      saveState: () => adapter.saveState(),
      restoreState(s) {
        count.restored = s;
        return adapter.restoreState(s);
      },
      residency: (gpa, n) => adapter.residency(gpa, n),
    };
  }

  /** Builds the VM (paused, not booted) from the fuzz guest's command line. */
  static async create(capture: Capture): Promise<InProcessDestination> {
    const opts = await vmmOptions(parseArgs(fuzzArgs()));
    const vm = await Vm.create(opts.spec, { boot: false });
    return new InProcessDestination(vm, capture.config);
  }

  /** Feeds one case; a stall fails after `stallMs`. */
  async run(c: FuzzCase, stallMs: number): Promise<FuzzOutcome> {
    const path = `${this.#dir}/in${this.#n++}.sock`;
    const before = this.#count.resumed;
    const result = receiveMigration(this.#port, `unix:${path}`, new MigrationStatusTracker(), {
      stallTimeoutMs: stallMs,
    });
    result.catch(() => {});
    await feedSocket(path, c.bytes, c.stall, result);
    try {
      await result;
      const ran = this.#count.resumed > before;
      if (!ran) return { ran };
      let ramCrc = 0;
      for (const r of this.#vm.memory.regions) ramCrc = crc32c(r.bytes, ramCrc);
      let stateCrc = 0;
      for (const x of this.#count.restored) {
        stateCrc = crc32c(new TextEncoder().encode(`${x.id}:${x.version}`), stateCrc);
        stateCrc = crc32c(x.payload, stateCrc);
      }
      return { ran, ramCrc, stateCrc };
    } catch (e) {
      return { ran: this.#count.resumed > before, error: (e as Error).message };
    }
  }

  async close(): Promise<void> {
    await this.#vm.destroy();
    Deno.removeSync(this.#dir, { recursive: true });
  }
}

/**
 * Feeds one case to a real `ferry ... -incoming unix:PATH` process: it ran the guest when it
 * printed any probe line or exited 0.
 */
export async function feedFerry(c: FuzzCase): Promise<FuzzOutcome & { code: number }> {
  const dir = tempDir();
  const path = `${dir}/in.sock`;
  const f = new Ferry([...fuzzArgs(), "-incoming", `unix:${path}`]);
  try {
    await waitIncoming(path);
    await feedSocket(path, c.bytes, c.stall, f.done);
    const st = await f.wait(30000);
    const ran = st.code === 0 || f.lines.some((l) => /PROBE/.test(l));
    const error = f.stderrLines.filter((l) => l.startsWith("ferry:")).pop();
    return { ran, code: st.code, ...(error !== undefined ? { error } : {}) };
  } finally {
    await f.kill();
    Deno.removeSync(dir, { recursive: true });
  }
}
