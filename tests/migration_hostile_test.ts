/**
 * Black box: garbage, hostile and truncated streams fed to a real `ferry -incoming` destination.
 * Each case: the destination exits non-zero with one clear error line, answers with a `nack`
 * when it can, never runs the guest and never prints a stack trace. Messages are built from the
 * wire table in docs/migration.md (protocol 2, 32-byte header: "FERRYMIG", u16 version, u16 kind,
 * u32 flags, u64 length, u32 sequence number, u32 CRC32C of header and payload; little-endian),
 * not from ferry's own encoder.
 */
import assert from "node:assert/strict";
import {
  assertNoStackTrace,
  FINAL,
  freePort,
  sleep,
  startVm,
  stopVm,
  tempDir,
  type Vm,
  waitMigration,
} from "./_fixture/migration.ts";
import { crc32c } from "../src/migration/digest.ts";

const APPEND = "mode=idle interval_ms=50";
const MEM = 256 << 20;
const KIND = { hello: 1, config: 2, ack: 3, nack: 4, ram: 5, state: 6, complete: 7, cancel: 8, resumed: 9 };

/** Header bytes (protocol 2). */
const HEADER = 32;
/** The sequence number of the next header built: each case starts it at the right value. */
let nextSeq = 0;

/** A header with the next sequence number and CRC field 0. */
function header(
  kind: number,
  length: number | bigint,
  o: { magic?: string; version?: number; flags?: number } = {},
): Uint8Array {
  const b = new Uint8Array(HEADER);
  b.set(new TextEncoder().encode((o.magic ?? "FERRYMIG").slice(0, 8)), 0);
  const v = new DataView(b.buffer);
  v.setUint16(8, o.version ?? 2, true);
  v.setUint16(10, kind, true);
  v.setUint32(12, o.flags ?? 0, true);
  v.setBigUint64(16, BigInt(length), true);
  v.setUint32(24, nextSeq++, true);
  return b;
}

/** A whole message: header, payload, and the CRC32C of both (CRC field 0) in the header. */
function message(kind: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const m = concat(header(kind, payload.length), payload);
  new DataView(m.buffer).setUint32(28, crc32c(m), true);
  return m;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function hello(product = "hostile test"): Uint8Array {
  const p = new TextEncoder().encode(product);
  const b = new Uint8Array(6 + p.length);
  const v = new DataView(b.buffer);
  v.setUint32(0, 4096, true);
  v.setUint16(4, p.length, true);
  b.set(p, 6);
  return b;
}

/** A RAM payload: runs of {gpa, pages, flags}, then `raw` bytes. */
function ramPayload(runs: [number | bigint, number, number][], raw = 0, count = runs.length): Uint8Array {
  const b = new Uint8Array(8 + runs.length * 16 + raw);
  const v = new DataView(b.buffer);
  v.setUint32(0, count, true);
  runs.forEach(([gpa, pages, flags], i) => {
    v.setBigUint64(8 + i * 16, BigInt(gpa), true);
    v.setUint32(16 + i * 16, pages, true);
    v.setUint32(20 + i * 16, flags, true);
  });
  return b;
}

function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n, true);
  return b;
}

const GARBAGE_KERNEL_SECTION = concat(
  new Uint8Array([9, 0]),
  new TextEncoder().encode("vm:kernel"),
  u32(1),
  u32(3),
  new Uint8Array([1, 9, 9]),
);

/**
 * A `digest` message (kind 10: u32 algorithm 1, u32 RAM, u32 state, u32 sections, u64 pages) that
 * matches a destination that received no RAM (every page's entry is 0) and `sections`: a forger
 * can compute it, so the checks behind it must still hold.
 */
function digest(sections: Uint8Array[]): Uint8Array {
  const pages = MEM / 4096;
  const b = new Uint8Array(24);
  const v = new DataView(b.buffer);
  v.setUint32(0, 1, true);
  v.setUint32(4, crc32c(new Uint8Array(pages * 4)), true);
  v.setUint32(8, sections.reduce((c, s) => crc32c(s, c), 0), true);
  v.setUint32(12, sections.length, true);
  v.setBigUint64(16, BigInt(pages), true);
  return message(10, b);
}

/**
 * The first two messages (hello, config) of a real source whose destination would accept them:
 * a real ferry migrates to a socket this test listens on.
 */
async function captureHandshake(): Promise<Uint8Array> {
  const dir = tempDir();
  const path = `${dir}/capture.sock`;
  const listener = Deno.listen({ transport: "unix", path });
  let src: Vm | undefined;
  try {
    src = await startVm({ dir, name: "capture", append: APPEND });
    await src.qmp.call("migrate", { uri: `unix:${path}` });
    const conn = await listener.accept();
    // Read exactly two messages: hello, config.
    let acc: Uint8Array = new Uint8Array(0);
    const size = () => {
      if (acc.length < HEADER) return Infinity;
      const first = HEADER + Number(new DataView(acc.buffer, acc.byteOffset + 16, 8).getBigUint64(0, true));
      if (acc.length < first + HEADER) return Infinity;
      return first + HEADER +
        Number(new DataView(acc.buffer, acc.byteOffset + first + 16, 8).getBigUint64(0, true));
    };
    const buf = new Uint8Array(65536);
    while (acc.length < size()) {
      const n = await conn.read(buf);
      if (n === null) throw new Error("the source closed before its config");
      acc = concat(acc, buf.slice(0, n));
    }
    const got = acc.slice(0, size());
    conn.close();
    await waitMigration(src.qmp, FINAL, 5000);
    return got;
  } finally {
    listener.close();
    await stopVm(src);
    Deno.removeSync(dir, { recursive: true });
  }
}

const handshake = await captureHandshake();

interface Case {
  name: string;
  /** Bytes to send; after `handshake` when `accepted`. */
  bytes: () => Uint8Array;
  /** Send the captured hello + config first and expect the `ack`. */
  accepted?: boolean;
  /** The destination's error (after "ferry: incoming migration failed: "). */
  error: RegExp;
}

const CASES: Case[] = [
  {
    name: "random bytes",
    bytes: () => crypto.getRandomValues(new Uint8Array(4096)),
    error: /bad magic [0-9a-f]{16}, want "FERRYMIG"/,
  },
  {
    name: "a valid header with a bad magic",
    bytes: () => concat(header(KIND.hello, 10, { magic: "FERRYMAG" }), hello()),
    error: /bad magic 46455252594d4147, want "FERRYMIG"/,
  },
  {
    name: "a header with protocol version 999",
    bytes: () => concat(header(KIND.hello, hello().length, { version: 999 }), hello()),
    error: /protocol version 999: this ferry speaks version 2 only/,
  },
  {
    name: "a protocol version 1 stream (no sequence numbers, no CRC)",
    bytes: () => {
      const h = new Uint8Array(24);
      h.set(new TextEncoder().encode("FERRYMIG"));
      new DataView(h.buffer).setUint16(8, 1, true);
      new DataView(h.buffer).setUint16(10, KIND.hello, true);
      new DataView(h.buffer).setBigUint64(16, BigInt(hello().length), true);
      return concat(h, hello());
    },
    error: /protocol version 1: this ferry speaks version 2 only \(the peer runs an older ferry/,
  },
  {
    name: "a truncated first message",
    bytes: () => concat(header(KIND.hello, 20), hello().subarray(0, 5)),
    error: /hello.*payload.*closed the connection after 5 of 20 bytes/,
  },
  {
    name: "a truncated header",
    bytes: () => header(KIND.hello, 10).subarray(0, 13),
    error: /message header.*closed the connection after 3 of 22 bytes/,
  },
  {
    name: "nothing at all",
    bytes: () => new Uint8Array(0),
    error: /source closed the connection before hello/,
  },
  {
    name: "an unknown message kind",
    bytes: () => header(77, 0),
    error: /unknown message kind 77/,
  },
  {
    name: "non-zero header flags",
    bytes: () => concat(header(KIND.hello, hello().length, { flags: 4 }), hello()),
    error: /unknown flags 0x4/,
  },
  {
    name: "a header announcing 1 TiB",
    bytes: () => header(KIND.hello, 1n << 40n),
    error: /of 1099511627776 bytes: limit is/,
  },
  {
    name: "a config before hello",
    bytes: () => message(KIND.config, new TextEncoder().encode("{}")),
    error: /expected 'hello' first, got 'config'/,
  },
  {
    name: "a hello with a wrong page size",
    bytes: () => {
      const h = hello();
      new DataView(h.buffer).setUint32(0, 65536, true);
      return message(KIND.hello, h);
    },
    error: /page size 65536, destination 4096/,
  },
  {
    name: "a config that is not JSON",
    bytes: () =>
      concat(message(KIND.hello, hello()), message(KIND.config, new TextEncoder().encode("{nope"))),
    error: /Cannot decode config/,
  },
  {
    name: "a config missing every attribute",
    bytes: () =>
      concat(
        message(KIND.hello, hello()),
        message(KIND.config, new TextEncoder().encode('{"config":{},"host":{}}')),
      ),
    error: /-machine: source \(absent\), destination q35/,
  },
  {
    name: "RAM outside guest RAM",
    accepted: true,
    bytes: () => message(KIND.ram, ramPayload([[MEM + 0x1000_0000, 1, 1]])),
    error: /RAM run 0: gpa 0x[0-9a-f]+ \+ 1 pages is outside guest RAM/,
  },
  {
    name: "RAM run whose pages overflow the address space",
    accepted: true,
    bytes: () => message(KIND.ram, ramPayload([[0xffff_ffff_f000n, 0xffff_ffff, 1]])),
    error: /outside guest RAM|not a page address/,
  },
  {
    name: "RAM at an unaligned address",
    accepted: true,
    bytes: () => message(KIND.ram, ramPayload([[0x1234, 1, 1]])),
    error: /gpa 0x1234 is not a page address/,
  },
  {
    name: "RAM whose length does not match its runs",
    accepted: true,
    bytes: () => message(KIND.ram, ramPayload([[0x200000, 2, 0]], 4096)),
    error: /length 4120 does not match its runs \(8216 bytes\)/,
  },
  {
    name: "RAM with more runs than it carries",
    accepted: true,
    bytes: () => message(KIND.ram, ramPayload([[0x200000, 1, 1]], 0, 1000)),
    error: /1000 runs do not fit in 24 bytes/,
  },
  {
    name: "RAM with unknown run flags",
    accepted: true,
    bytes: () => message(KIND.ram, ramPayload([[0x200000, 1, 6]])),
    error: /unknown flags 0x6/,
  },
  {
    name: "RAM cut off in the middle of its pages",
    accepted: true,
    bytes: () => concat(header(KIND.ram, 8 + 16 + 8192), ramPayload([[0x200000, 2, 0]], 1000)),
    error: /RAM pages.*closed the connection after/,
  },
  {
    name: "RAM after state",
    accepted: true,
    bytes: () =>
      concat(
        message(KIND.state, concat(new Uint8Array([3, 0]), new TextEncoder().encode("abc"), u32(1), u32(0))),
        message(KIND.ram, ramPayload([[0x200000, 1, 1]])),
      ),
    error: /'ram' after 'state'/,
  },
  {
    name: "the same state section twice",
    accepted: true,
    bytes: () => {
      const s = () =>
        message(KIND.state, concat(new Uint8Array([3, 0]), new TextEncoder().encode("abc"), u32(1), u32(0)));
      return concat(s(), s());
    },
    error: /section 'abc' sent twice/,
  },
  {
    name: "one message sent twice (a replay)",
    accepted: true,
    bytes: () => {
      const s = message(
        KIND.state,
        concat(new Uint8Array([3, 0]), new TextEncoder().encode("abc"), u32(1), u32(0)),
      );
      return concat(s, s);
    },
    error:
      /Cannot accept migration message #3 \('state'\) at stream offset \d+: sequence number 2, want 3: message #2 was already received: repeated or out of order$/,
  },
  {
    name: "a message missing (sequence number 3 where 2 belongs)",
    accepted: true,
    bytes: () => {
      nextSeq++;
      return message(KIND.ram, ramPayload([[0x200000, 1, 1]]));
    },
    error:
      /message #2 \('ram'\) at stream offset \d+: sequence number 3, want 2: message #2 is missing or out of order/,
  },
  {
    name: "a RAM page with one flipped bit",
    accepted: true,
    bytes: () => {
      const m = message(KIND.ram, ramPayload([[0x200000, 1, 0]], 4096));
      m[m.length - 100]! ^= 0x10;
      return m;
    },
    error:
      /Cannot accept migration message #2 \('ram'\) at stream offset \d+: CRC32C mismatch \(0x[0-9a-f]{8} on the wire, 0x[0-9a-f]{8} computed\): the message was damaged$/,
  },
  {
    name: "complete announcing more sections than were sent",
    accepted: true,
    bytes: () => message(KIND.complete, u32(5)),
    error: /source sent 0 sections but announced 5/,
  },
  {
    name: "complete without any vCPU state",
    accepted: true,
    bytes: () => concat(digest([]), message(KIND.complete, u32(0))),
    error: /Cannot restore device state: .*section 'vm:kernel' is missing/,
  },
  {
    name: "a state section with garbage in place of vCPU state",
    accepted: true,
    bytes: () =>
      concat(
        message(KIND.state, GARBAGE_KERNEL_SECTION),
        digest([GARBAGE_KERNEL_SECTION]),
        message(KIND.complete, u32(1)),
      ),
    error: /Cannot restore device state: /,
  },
  {
    name: "a cancel from the source",
    accepted: true,
    bytes: () => message(KIND.cancel, new TextEncoder().encode("operator changed their mind")),
    error: /canceled by the source: operator changed their mind/,
  },
];

async function connectRetry(uri: string): Promise<Deno.Conn> {
  const deadline = Date.now() + 10000;
  for (;;) {
    try {
      if (uri.startsWith("unix:")) return await Deno.connect({ transport: "unix", path: uri.slice(5) });
      const [, host, port] = uri.match(/^tcp:(.+):(\d+)$/)!;
      return await Deno.connect({ hostname: host!, port: Number(port) });
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await sleep(20);
    }
  }
}

/** Reads whatever the destination sends until it closes (bounded). */
async function readAll(conn: Deno.Conn, timeoutMs: number): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(65536);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const n = await Promise.race([
      conn.read(buf).catch(() => null),
      sleep(deadline - Date.now()).then(() => null),
    ]);
    if (n === null) break;
    parts.push(buf.slice(0, n));
  }
  return concat(...parts);
}

/** The messages in `b` as [kind, payload text]. */
function parse(b: Uint8Array): [number, string][] {
  const out: [number, string][] = [];
  let o = 0;
  while (o + HEADER <= b.length) {
    const v = new DataView(b.buffer, b.byteOffset + o);
    const len = Number(v.getBigUint64(16, true));
    out.push([v.getUint16(10, true), new TextDecoder().decode(b.subarray(o + HEADER, o + HEADER + len))]);
    o += HEADER + len;
  }
  return out;
}

CASES.forEach((c, i) => {
  const transport = i % 2 === 0 ? "unix" : "tcp";
  Deno.test(`an incoming migration fed ${c.name} over ${transport} exits non-zero with a clear error and never runs the guest`, async () => {
    const dir = tempDir();
    const uri = transport === "unix" ? `unix:${dir}/in.sock` : `tcp:127.0.0.1:${freePort()}`;
    let dst: Vm | undefined;
    let conn: Deno.Conn | undefined;
    try {
      dst = await startVm({ dir, name: "dst", append: APPEND, incoming: uri });
      conn = await connectRetry(uri);
      if (c.accepted) {
        await conn.write(handshake);
        const ack = new Uint8Array(HEADER);
        let got = 0;
        while (got < HEADER) {
          const n = await conn.read(ack.subarray(got));
          if (n === null) throw new Error(`no ack\n${dst.ferry.transcript()}`);
          got += n;
        }
        assert.deepEqual(parse(ack), [[KIND.ack, ""]], "the replayed handshake is accepted");
      }
      // The replayed hello and config are messages #0 and #1.
      nextSeq = c.accepted ? 2 : 0;
      const bytes = c.bytes();
      // The destination may stop reading (and close) before it took everything: that is fine.
      await conn.write(bytes).catch(() => 0);
      await conn.closeWrite().catch(() => {}); // then EOF: truncation shows at once
      const replies = parse(await readAll(conn, 3000));
      conn.close();
      conn = undefined;
      const t0 = Date.now();
      const st = await dst.ferry.wait(10000);
      assert.ok(Date.now() - t0 < 5000, "exits promptly");
      assert.equal(st.code, 1, `exit code\n${dst.ferry.transcript()}`);
      const last = dst.ferry.stderrLines.at(-1) ?? "";
      assert.match(last, /^ferry: incoming migration failed: \S/, dst.ferry.transcript());
      assert.match(last, c.error, dst.ferry.transcript());
      assertNoStackTrace(dst.ferry);
      assert.ok(!dst.ferry.lines.some((l) => /PROBE/.test(l)), "the guest never ran");
      const nack = replies.find(([k]) => k === KIND.nack);
      assert.ok(nack, `the destination answers with a nack: ${JSON.stringify(replies)}`);
      assert.match(nack[1], c.error, "the nack carries the reason");
      assert.ok(!replies.some(([k]) => k === KIND.resumed), "never resumed");
    } finally {
      conn?.close();
      await stopVm(dst);
      Deno.removeSync(dir, { recursive: true });
    }
  });
});
