/**
 * Shared helpers of the black-box migration tests (`tests/migration_*_test.ts`): a source and a
 * destination ferry, polling `query-migrate`, fd and RSS counts, and the network-namespace pair.
 * @module
 */
import assert from "node:assert/strict";
import { Ferry, PROBE, probeArgs, ROOT, tempDir, waitIncoming } from "./ferry.ts";
import type { QmpClient, QmpMessage } from "./qmp_client.ts";
import { ferryRunArgs } from "../../scripts/bundle.ts";
import { encodeMessage, HEADER_BYTES, HEADER_LENGTH_OFFSET } from "../../src/migration/stream.ts";

export { Ferry, PROBE, probeArgs, ROOT, tempDir };
export type { QmpClient, QmpMessage };

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Final migration states. */
export const FINAL = ["completed", "failed", "canceled"];

/**
 * Ports handed out lie below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768 by
 * default), so no outgoing connection of another test can hold one when a destination listens on it.
 */
const PORT_LOW = 20000, PORT_HIGH = 32000;
let nextPort = PORT_LOW + Math.floor(Math.random() * (PORT_HIGH - PORT_LOW));
/** A fresh TCP port number that nothing listens on now (random start per process, then sequential). */
export function freePort(): number {
  for (;;) {
    const port = nextPort++;
    if (nextPort >= PORT_HIGH) nextPort = PORT_LOW;
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
      return port;
    } catch { /* taken: the next one */ }
  }
}

/** Polls `query-migrate` until its status is one of `want`. */
export async function waitMigration(
  q: QmpClient,
  want: string[],
  timeoutMs = 30000,
  pollMs = 25,
): Promise<QmpMessage> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await q.call("query-migrate") as QmpMessage;
    if (want.includes(r.status as string)) return r;
    if (Date.now() > deadline) {
      throw new Error(`migration still ${JSON.stringify(r)}, want ${want.join("|")}`);
    }
    await sleep(pollMs);
  }
}

/** `query-status` → its `status`. */
export async function runState(q: QmpClient): Promise<string> {
  return (await q.call("query-status") as QmpMessage).status as string;
}

/** `ram` member of a query-migrate reply. */
export function ram(r: QmpMessage): QmpMessage {
  return (r.ram ?? {}) as QmpMessage;
}

/** Asserts the guest of `f` makes progress (a new PROGRESS line for `cpu`) and printed no FAIL. */
export async function assertGuestRuns(f: Ferry, what: string, cpu = 0, timeoutMs = 5000): Promise<void> {
  const from = f.lines.length;
  await f.waitLine(new RegExp(`PROBE PROGRESS cpu=${cpu} `), timeoutMs, from);
  assertNoFail(f, what);
}

/** Asserts no FAIL, EXCEPTION or second BOOT line on the serial console of `f`. */
export function assertNoFail(f: Ferry, what: string): void {
  const bad = f.lines.filter((l) => /FAIL|EXCEPTION/.test(l));
  assert.deepEqual(bad, [], `${what}: guest reported failures\n${f.transcript()}`);
}

/** Asserts ferry printed no JavaScript stack trace or uncaught error on stderr. */
export function assertNoStackTrace(f: Ferry): void {
  const bad = f.stderrLines.filter((l) => /^\s+at |Uncaught|panicked|RUST_BACKTRACE/.test(l));
  assert.deepEqual(bad, [], `ferry printed a stack trace\n${f.transcript()}`);
}

/** The number of open file descriptors of `pid`. */
export function fdCount(pid: number): number {
  let n = 0;
  for (const _ of Deno.readDirSync(`/proc/${pid}/fd`)) n++;
  return n;
}

/** Resident set size of `pid` in KiB. */
export function rssKib(pid: number): number {
  const m = Deno.readTextFileSync(`/proc/${pid}/status`).match(/VmRSS:\s+(\d+) kB/);
  return m ? Number(m[1]) : 0;
}

/** A source ferry with QMP, its console and its QMP client. */
export interface Vm {
  ferry: Ferry;
  qmp: QmpClient;
  qmpPath: string;
}

/** Options of {@linkcode startVm}. */
export interface VmOptions {
  dir: string;
  name: string;
  append: string;
  mem?: string;
  smp?: number;
  incoming?: string;
  kernel?: string;
  /** More ferry arguments. */
  extra?: string[];
  /** Runs ferry through `ip netns exec NS`. */
  netns?: string;
}

/** Starts a ferry (a source, or a destination with `incoming`) and connects to its QMP socket. */
export async function startVm(o: VmOptions): Promise<Vm> {
  const qmpPath = `${o.dir}/${o.name}.qmp`;
  let args = probeArgs({
    append: o.append,
    mem: o.mem ?? "256M",
    smp: o.smp ?? 1,
    qmp: qmpPath,
    extra: [...(o.extra ?? []), ...(o.incoming !== undefined ? ["-incoming", o.incoming] : [])],
  });
  if (o.kernel !== undefined) args = args.map((a, i) => (args[i - 1] === "-kernel" ? o.kernel! : a));
  const ferry = o.netns !== undefined
    ? new Ferry(["netns", "exec", o.netns, Deno.execPath(), ...ferryRunArgs(), ...args], {
      qmpPath,
      env: { FERRY_BIN: "ip" },
    })
    : new Ferry(args, { qmpPath });
  try {
    return { ferry, qmp: await ferry.qmp(), qmpPath };
  } catch (e) {
    await ferry.kill(); // never left behind by a caller that got no Vm to stop
    throw e;
  }
}

/** Closes QMP and kills the process (bounded). */
export async function stopVm(vm: Vm | undefined): Promise<void> {
  if (!vm) return;
  await vm.qmp.close();
  await vm.ferry.kill();
}

/** Runs a command; returns its exit code and output. */
export async function sh(cmd: string, ...args: string[]): Promise<{ code: number; out: string }> {
  const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

/** Two network namespaces joined by a veth pair, with TEST-NET-1 (192.0.2.0/24) addresses. */
export interface NetnsPair {
  a: string;
  b: string;
  addrA: string;
  addrB: string;
  /** The veth end inside `a`. */
  linkA: string;
  remove(): Promise<void>;
}

/**
 * Creates the namespaces, or returns a reason why it cannot (no `ip`, no privilege). The
 * addresses live only inside the two namespaces created here and are never routed anywhere.
 */
export async function createNetnsPair(): Promise<NetnsPair | string> {
  const tag = `${Deno.pid % 10000}${Math.floor(Math.random() * 100)}`;
  const a = `ferrymig-a${tag}`;
  const b = `ferrymig-b${tag}`;
  const linkA = `fma${tag}`;
  const linkB = `fmb${tag}`;
  const remove = async () => {
    await sh("ip", "netns", "del", a);
    await sh("ip", "netns", "del", b);
  };
  try {
    const steps: string[][] = [
      ["netns", "add", a],
      ["netns", "add", b],
      ["link", "add", linkA, "netns", a, "type", "veth", "peer", "name", linkB, "netns", b],
      ["-n", a, "addr", "add", "192.0.2.1/24", "dev", linkA],
      ["-n", b, "addr", "add", "192.0.2.2/24", "dev", linkB],
      ["-n", a, "link", "set", "lo", "up"],
      ["-n", b, "link", "set", "lo", "up"],
      ["-n", a, "link", "set", linkA, "up"],
      ["-n", b, "link", "set", linkB, "up"],
    ];
    for (const s of steps) {
      const r = await sh("ip", ...s);
      if (r.code !== 0) {
        await remove();
        return `'ip ${s.join(" ")}' failed: ${r.out.trim()}`;
      }
    }
  } catch (e) {
    return `ip is unavailable: ${(e as Error).message}`;
  }
  return { a, b, addrA: "192.0.2.1", addrB: "192.0.2.2", linkA, remove };
}

// ------------------------------------------------------------------ a scripted migration destination
/** Wire message kinds a scripted destination uses (docs/migration.md). */
export const KIND = { config: 2, ack: 3, nack: 4, complete: 7, resumed: 9 } as const;

const KIND_NAME = { [KIND.ack]: "ack", [KIND.nack]: "nack", [KIND.resumed]: "resumed" } as const;

/** A whole reply message (protocol 2: its sequence number `seq` and CRC32C, stream.ts). */
function reply(
  kind: typeof KIND.ack | typeof KIND.nack | typeof KIND.resumed,
  seq: number,
  payload = new Uint8Array(0),
): Uint8Array {
  return encodeMessage(KIND_NAME[kind], payload, seq);
}

async function readExact(conn: Deno.Conn, n: number): Promise<Uint8Array | null> {
  const b = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = await conn.read(b.subarray(got));
    if (r === null) return null;
    got += r;
  }
  return b;
}

/**
 * A destination on unix socket `path` speaking docs/migration.md's wire format (protocol 2; it
 * checks no sequence number nor CRC of what it swallows, and numbers its own replies): acks the
 * configuration, swallows everything up to `complete` (so the source has paused and handed over
 * its devices), runs `onComplete` if given, then does `then`: answer `resumed`, a `nack`, or close.
 * `done` resolves with the message kinds it saw.
 */
export function scriptedDestination(
  path: string,
  then: "resumed" | "nack" | "close",
  onComplete?: () => Promise<void>,
): { listener: Deno.Listener; done: Promise<number[]> } {
  const listener = Deno.listen({ transport: "unix", path });
  const kinds: number[] = [];
  const done = (async () => {
    const conn = await listener.accept();
    try {
      for (;;) {
        const h = await readExact(conn, HEADER_BYTES);
        if (!h) return kinds;
        const v = new DataView(h.buffer);
        const kind = v.getUint16(10, true);
        let left = Number(v.getBigUint64(HEADER_LENGTH_OFFSET, true));
        kinds.push(kind);
        while (left > 0) {
          const chunk = await readExact(conn, Math.min(left, 1 << 20));
          if (!chunk) return kinds;
          left -= chunk.length;
        }
        if (kind === KIND.config) await conn.write(reply(KIND.ack, 0));
        if (kind === KIND.complete) {
          if (onComplete) await onComplete();
          if (then === "resumed") await conn.write(reply(KIND.resumed, 1));
          if (then === "nack") {
            const why = new TextEncoder().encode("Cannot restore device state: scripted refusal");
            await conn.write(reply(KIND.nack, 1, why));
          }
          await sleep(100);
          return kinds;
        }
      }
    } finally {
      conn.close();
    }
  })();
  return { listener, done };
}

// ------------------------------------------------------------------ a source and destination pair
/** What one side of a {@linkcode withMigrationPair} changes from the options both share. */
export interface PairSideOptions {
  /** Replaces the shared `append`. */
  append?: string;
  /** Replaces the shared `mem`. */
  mem?: string;
  /** Replaces the shared `smp`. */
  smp?: number;
  /** Replaces the probe guest as `-kernel`. */
  kernel?: string;
  /** Ferry arguments after the shared `extra`. */
  extra?: string[];
  /** Replaces the shared `netns`. */
  netns?: string;
}

/** Options of {@linkcode withMigrationPair}: one command line for both sides, plus what differs. */
export interface PairOptions {
  /** The probe guest's `-append`. */
  append: string;
  /** @default {"256M"} */
  mem?: string;
  /** @default {1} */
  smp?: number;
  /** More ferry arguments of both sides. */
  extra?: string[];
  /** Runs both ferries through `ip netns exec NS`. */
  netns?: string;
  /** `unix:<dir>/mig.sock`, or `tcp:<host>:<free port>`. @default {"unix"} */
  transport?: "unix" | "tcp";
  /** The address a `tcp` destination listens on. @default {"127.0.0.1"} */
  host?: string;
  /** Only the source's differences. */
  src?: PairSideOptions;
  /** Only the destination's differences (a mismatch test's other `-smp`, say). */
  dst?: PairSideOptions;
}

/** What the body of {@linkcode withMigrationPair} gets. */
export interface MigrationPair {
  /** The temp dir holding the QMP and migration sockets, removed afterwards. */
  dir: string;
  src: Vm;
  /** Started with `-incoming uri`, already listening. */
  dst: Vm;
  /** The destination's `-incoming` uri, for `migrate`. */
  uri: string;
}

function sideOptions(dir: string, name: string, o: PairOptions, side: PairSideOptions = {}): VmOptions {
  const vm: VmOptions = {
    dir,
    name,
    append: side.append ?? o.append,
    extra: [...(o.extra ?? []), ...(side.extra ?? [])],
  };
  const mem = side.mem ?? o.mem, smp = side.smp ?? o.smp, netns = side.netns ?? o.netns;
  if (mem !== undefined) vm.mem = mem;
  if (smp !== undefined) vm.smp = smp;
  if (netns !== undefined) vm.netns = netns;
  if (side.kernel !== undefined) vm.kernel = side.kernel;
  return vm;
}

/**
 * Runs `body` with a source ferry and a destination ferry started with the same command line plus
 * `-incoming`, each with QMP, in a fresh temp dir; the destination already listens when `body`
 * starts. Afterwards, also when `body` throws, both QMP clients are closed, both ferries killed and
 * the dir removed. Pass a function of the dir instead of options when a command line names files
 * made there (certificates, a changed kernel).
 *
 * @param options The shared command line, the transport, and what differs per side.
 * @param body The test, given `{ dir, src, dst, uri }`.
 * @example
 * ```ts
 * await withMigrationPair({ append: "mode=pattern mib=8 interval_ms=50", transport: "tcp" }, async ({ src, uri }) => {
 *   await src.ferry.waitLine(/PROBE VERIFY ok/);
 *   await src.qmp.call("migrate", { uri });
 *   assert.equal((await waitMigration(src.qmp, FINAL)).status, "completed");
 * });
 * ```
 */
export async function withMigrationPair(
  options: PairOptions | ((dir: string) => PairOptions | Promise<PairOptions>),
  body: (pair: MigrationPair) => Promise<void>,
): Promise<void> {
  const dir = tempDir();
  let src: Vm | undefined, dst: Vm | undefined;
  try {
    const o = typeof options === "function" ? await options(dir) : options;
    if (o.host !== undefined && o.transport !== "tcp") {
      throw new TypeError(`Cannot listen on host '${o.host}': transport is not tcp`);
    }
    const uri = o.transport === "tcp" ? `tcp:${o.host ?? "127.0.0.1"}:${freePort()}` : `unix:${dir}/mig.sock`;
    src = await startVm(sideOptions(dir, "src", o, o.src));
    dst = await startVm({ ...sideOptions(dir, "dst", o, o.dst), incoming: uri });
    await waitIncoming(dst.qmp);
    await body({ dir, src, dst, uri });
  } finally {
    try {
      await stopVm(src);
      await stopVm(dst);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  }
}
