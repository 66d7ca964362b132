import assert from "node:assert/strict";
import { FAKE_CONFIG, FAKE_HOST, FakeVm, listenDestination } from "./_fake_vm.ts";
import {
  decodeHeader,
  encodeComplete,
  encodeConfig,
  encodeHeader,
  encodeHello,
  encodeReason,
  encodeRunTable,
  encodeSection,
  HEADER_BYTES,
  HEADER_LENGTH_OFFSET,
  HEADER_SEQ_OFFSET,
  MAGIC,
  type MessageKindName,
  type RamRun,
  sealMessage,
} from "./stream.ts";
import { encodeDigest, MigrationDigest } from "./digest.ts";

const REGIONS = [{ gpa: 0, sizeBytes: 64 * 4096 }, { gpa: 0x10_0000, sizeBytes: 16 * 4096 }];

function msg(kind: MessageKindName, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(HEADER_BYTES + payload.length);
  b.set(encodeHeader(kind, payload.length));
  b.set(payload, HEADER_BYTES);
  return b;
}

function ram(runs: RamRun[], fill = 0x5a): Uint8Array {
  const table = encodeRunTable(runs);
  let raw = 0;
  for (const r of runs) if (!r.zero) raw += r.pageCount * 4096;
  const data = new Uint8Array(raw).fill(fill);
  const p = new Uint8Array(table.length + raw);
  p.set(table);
  p.set(data, table.length);
  return msg("ram", p);
}

const HELLO = msg("hello", encodeHello({ pageSize: 4096, product: "ferry test" }));
const CONFIG = msg("config", encodeConfig({ config: FAKE_CONFIG, host: FAKE_HOST }));
const SECTION = { id: "serial:ttyS0", version: 2, payload: new Uint8Array([9, 8, 7]) };

/**
 * The `digest` message a source would send after these batches and sections: the same runs
 * applied to a scratch VM's RAM, checksummed the way the source does.
 */
function digestMessage(batches: [RamRun[], number][], sections: Uint8Array[]): Uint8Array {
  const scratch = new FakeVm({ regions: REGIONS });
  const d = new MigrationDigest(scratch.memory);
  for (const [runs, fill] of batches) {
    for (const r of runs) {
      const region = scratch.memory.regionOf(r.gpa, r.pageCount * 4096)!;
      const off = r.gpa - region.gpa;
      region.bytes.fill(r.zero ? 0 : fill, off, off + r.pageCount * 4096);
    }
    d.recordRuns(runs);
  }
  for (const s of sections) d.recordSection(s);
  return msg("digest", encodeDigest(d.finish()));
}

/** Every page of REGIONS as one zero run per region (a full pass of an all-zero source). */
const ALL_ZERO: RamRun[] = REGIONS.map((r) => ({ gpa: r.gpa, pageCount: r.sizeBytes / 4096, zero: true }));
const BATCH_1: RamRun[] = [{ gpa: 0, pageCount: 1, zero: true }, { gpa: 4096, pageCount: 2, zero: false }];
const BATCH_2: RamRun[] = [{ gpa: 0x10_0000 + 4096, pageCount: 3, zero: false }];

/** A valid stream and the offsets where each message starts. */
function validStream(): { bytes: Uint8Array; boundaries: number[] } {
  const msgs = [
    HELLO,
    CONFIG,
    ram(ALL_ZERO),
    ram(BATCH_1),
    ram(BATCH_2, 0x77),
    msg("state", encodeSection(SECTION)),
    digestMessage([[ALL_ZERO, 0], [BATCH_1, 0x5a], [BATCH_2, 0x77]], [encodeSection(SECTION)]),
    msg("complete", encodeComplete(1)),
  ];
  const boundaries: number[] = [];
  let n = 0;
  for (const m of msgs) {
    boundaries.push(n);
    n += m.length;
  }
  const bytes = new Uint8Array(n);
  for (let i = 0; i < msgs.length; i++) bytes.set(msgs[i]!, boundaries[i]!);
  return { bytes, boundaries };
}

/** {@linkcode validStream}, numbered and sealed as a source sends it. */
function sequencedStream(): { bytes: Uint8Array; boundaries: number[] } {
  const s = validStream();
  return { bytes: sequenced(s.bytes), boundaries: s.boundaries };
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

const MARK = 0xaa;

/**
 * Numbers the whole messages at the start of `bytes` 0, 1, 2… and recomputes their CRC32C (in a
 * copy), as a source that built this stream would: so that a test reaches the decoder it aims at.
 * Stops at the first header without the magic or a message cut short (its header is numbered).
 */
function sequenced(bytes: Uint8Array): Uint8Array {
  const b = bytes.slice();
  const v = new DataView(b.buffer);
  for (let o = 0, i = 0; o + HEADER_BYTES <= b.length; i++) {
    if (!MAGIC.every((x, k) => b[o + k] === x)) break;
    const end = o + HEADER_BYTES + Number(v.getBigUint64(o + HEADER_LENGTH_OFFSET, true));
    v.setUint32(o + HEADER_SEQ_OFFSET, i, true);
    if (end > b.length) break;
    sealMessage(b.subarray(o, end));
    o = end;
  }
  return b;
}

/**
 * Feeds `bytes` to a fresh destination, {@linkcode sequenced} unless `raw`; returns its error (or
 * null) and the reply kinds.
 */
async function feed(
  input: Uint8Array,
  raw = false,
): Promise<{ error: Error | null; replies: string[]; vm: FakeVm }> {
  const bytes = raw ? input : sequenced(input);
  const vm = new FakeVm({ regions: REGIONS, paused: true });
  for (const r of vm.memory.regions) r.bytes.fill(MARK);
  const d = await listenDestination(vm, "tcp");
  const port = Number(d.uri.split(":")[2]);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    let off = 0;
    while (off < bytes.length) off += await conn.write(bytes.subarray(off));
    await conn.closeWrite();
  } catch { /* the destination may hang up first */ }
  const replies: string[] = [];
  const got: Uint8Array[] = [];
  const buf = new Uint8Array(65536);
  try {
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      got.push(buf.slice(0, n));
    }
  } catch { /* reset */ }
  conn.close();
  const all = concat(...got);
  for (let o = 0; o + HEADER_BYTES <= all.length;) {
    const h = decodeHeader(all.subarray(o, o + HEADER_BYTES));
    replies.push(h.kind);
    o += HEADER_BYTES + h.length;
  }
  const error = await d.result;
  if (error) {
    assert.equal(d.status.status, "failed");
    assert.equal(d.status.queryMigrate()["error-desc"], error.message);
    assert.equal(vm.resumeCount, 0, "never resumed after a failure");
    assert.equal(vm.restored, undefined);
  }
  return { error, replies, vm };
}

/** True when no byte outside `[gpa, gpa+len)` ranges changed from the mark. */
function untouchedExcept(vm: FakeVm, written: [number, number][] = []): boolean {
  for (const r of vm.memory.regions) {
    for (let i = 0; i < r.bytes.length; i++) {
      const gpa = r.gpa + i;
      if (written.some(([a, n]) => gpa >= a && gpa < a + n)) continue;
      if (r.bytes[i] !== MARK) return false;
    }
  }
  return true;
}

Deno.test("receiveMigration accepts a valid hand-built stream and answers ack then resumed", async () => {
  const { error, replies, vm } = await feed(validStream().bytes);
  assert.equal(error, null);
  assert.deepEqual(replies, ["ack", "resumed"]);
  assert.equal(vm.resumeCount, 1);
  assert.deepEqual(vm.restored, [SECTION]);
  const r0 = vm.memory.regions[0]!.bytes;
  assert.ok(r0.subarray(0, 4096).every((b) => b === 0), "zero run filled zeros");
  assert.ok(r0.subarray(4096, 3 * 4096).every((b) => b === 0x5a));
  assert.ok(vm.memory.slice(0x10_1000, 3 * 4096).every((b) => b === 0x77));
  assert.ok(vm.memory.slice(0x10_0000, 4096).every((b) => b === 0), "the full pass zeroed the rest");
});

Deno.test("receiveMigration refuses a stream whose RAM or state does not match the switch-over digest", async () => {
  const { bytes, boundaries } = validStream();
  // One bit of a raw page (the first 0x5a byte: BATCH_1's bytes) and the last byte of the section.
  const flips: [string, number][] = [
    ["ram", bytes.indexOf(0x5a)],
    ["state", boundaries[5]! + HEADER_BYTES + encodeSection(SECTION).length - 1],
  ];
  for (const [what, at] of flips) {
    const bad = bytes.slice();
    bad[at]! ^= 0x10;
    const { error, replies, vm } = await feed(bad);
    assert.ok(error, `${what}: a flipped bit must fail`);
    assert.match(error.message, what === "ram" ? /guest RAM differs/ : /device and vCPU state differs/);
    assert.ok(!replies.includes("resumed"));
    assert.equal(vm.resumeCount, 0);
  }
  // Without the digest message the destination refuses too.
  const noDigest = concat(bytes.subarray(0, boundaries[6]), bytes.subarray(boundaries[7]!));
  assert.match((await feed(noDigest)).error!.message, /'complete' without the switch-over 'digest'/);
});

Deno.test("receiveMigration rejects a stream truncated at any message boundary or inside a message", async () => {
  const { bytes, boundaries } = validStream();
  const cuts = new Set<number>();
  for (const b of boundaries) {
    for (const d of [0, 1, 10, 23, 24, 30]) if (b + d < bytes.length) cuts.add(b + d);
  }
  cuts.add(bytes.length - 1);
  for (const cut of [...cuts].sort((a, b) => a - b)) {
    const { error, replies } = await feed(bytes.subarray(0, cut));
    assert.ok(error, `cut at ${cut} must fail`);
    assert.match(error.message, /closed the connection/, `cut at ${cut}: ${error.message}`);
    assert.ok(!replies.includes("resumed"));
    if (cut < boundaries[2]!) {
      assert.ok(!replies.includes("ack"), `cut at ${cut}: no ack before the whole config`);
    }
  }
});

Deno.test("receiveMigration rejects a bad magic, a newer version, unknown kinds and flags, a huge length", async () => {
  const bad = HELLO.slice();
  bad.set(new TextEncoder().encode("QEMUVMFL"), 0);
  let r = await feed(bad);
  assert.match(r.error!.message, /bad magic 51454d55564d464c, want "FERRYMIG"/);
  assert.deepEqual(r.replies, ["nack"]);

  const v999 = HELLO.slice();
  new DataView(v999.buffer).setUint16(8, 999, true);
  r = await feed(v999);
  assert.match(
    r.error!.message,
    /Cannot accept migration protocol version 999: this ferry speaks version 2 only \(the peer runs a newer ferry\)/,
  );

  const kind = HELLO.slice();
  new DataView(kind.buffer).setUint16(10, 77, true);
  r = await feed(kind);
  assert.match(r.error!.message, /unknown message kind 77/);

  const flags = HELLO.slice();
  new DataView(flags.buffer).setUint32(12, 4, true);
  r = await feed(flags);
  assert.match(r.error!.message, /unknown flags 0x4/);

  const huge = HELLO.slice();
  new DataView(huge.buffer).setBigUint64(16, 1n << 40n, true);
  r = await feed(huge);
  assert.match(r.error!.message, /'hello' message of 1099511627776 bytes: limit is 4102/);

  // Within the message bound but over the per-kind bound: refused before allocating.
  const big = encodeHeader("ram", 60 * 1024 * 1024);
  new DataView(big.buffer).setUint16(10, 2, true); // kind config
  r = await feed(concat(HELLO, big));
  assert.match(r.error!.message, /'config' message of 62914560 bytes: limit is 1048576/);
});

Deno.test("receiveMigration refuses a damaged, missing, repeated or reordered message by its CRC32C and sequence number, in one line naming it and its offset", async () => {
  const { bytes, boundaries } = sequencedStream();
  const at = (i: number) => boundaries[i]!;
  const message = (i: number) => bytes.subarray(at(i), at(i + 1) ?? bytes.length);
  // The unmodified, sequenced stream runs.
  assert.equal((await feed(bytes, true)).error, null);

  // One bit of a raw page of message #3 (a 'ram' message), and of its header's length-free bytes.
  for (const [what, off] of [["page", bytes.indexOf(0x5a)], ["flags", at(3) + 12]] as const) {
    const bad = bytes.slice();
    bad[off]! ^= 0x01;
    const r = await feed(bad, true);
    const want = what === "page"
      ? new RegExp(
        `^Cannot accept migration message #3 \\('ram'\\) at stream offset ${at(3)}: CRC32C mismatch`,
      )
      : /unknown flags 0x1 \(message #3 at stream offset \d+\)/;
    assert.match(r.error!.message, want, what);
    assert.ok(!r.error!.message.includes("\n"));
    assert.equal(r.vm.resumeCount, 0);
    assert.deepEqual(r.replies, ["ack", "nack"]);
  }
  // A flipped bit in the CRC field itself.
  const crc = bytes.slice();
  crc[at(5) + 28]! ^= 0x80;
  assert.match(
    (await feed(crc, true)).error!.message,
    new RegExp(
      `^Cannot accept migration message #5 \\('state'\\) at stream offset ${at(5)}: CRC32C mismatch`,
    ),
  );

  const order = (...idx: number[]) => concat(...idx.map(message));
  const cases: [Uint8Array, RegExp][] = [
    // Message #3 removed: #4 arrives where #3 belongs.
    [
      order(0, 1, 2, 4, 5, 6, 7),
      /^Cannot accept migration message #3 \('ram'\) at stream offset \d+: sequence number 4, want 3: message #3 is missing or out of order$/,
    ],
    // Message #3 twice.
    [
      order(0, 1, 2, 3, 3, 4, 5, 6, 7),
      /message #4 \('ram'\) at stream offset \d+: sequence number 3, want 4: message #3 was already received: repeated or out of order/,
    ],
    // Messages #3 and #4 swapped.
    [order(0, 1, 2, 4, 3, 5, 6, 7), /message #3 \('ram'\) .*sequence number 4, want 3/],
  ];
  for (const [input, re] of cases) {
    const r = await feed(input, true);
    assert.match(r.error!.message, re);
    assert.equal(r.vm.resumeCount, 0);
  }
});

Deno.test("receiveMigration refuses a protocol version 1 peer by its version, saying so", async () => {
  // A version 1 header: 24 bytes, no sequence number nor CRC.
  const v1 = new Uint8Array(24 + 6);
  v1.set(MAGIC);
  new DataView(v1.buffer).setUint16(8, 1, true);
  new DataView(v1.buffer).setUint16(10, 1, true);
  new DataView(v1.buffer).setBigUint64(16, 6n, true);
  const r = await feed(v1, true);
  assert.match(
    r.error!.message,
    /^Cannot accept migration protocol version 1: this ferry speaks version 2 only \(the peer runs an older ferry whose stream has no sequence numbers nor CRC32C\)/,
  );
  assert.deepEqual(r.replies, ["nack"]);
});

Deno.test("receiveMigration rejects out-of-range RAM runs before writing any byte of the message", async () => {
  const cases: [RamRun[], RegExp][] = [
    [
      [{ gpa: 4096, pageCount: 1, zero: false }, { gpa: 64 * 4096, pageCount: 1, zero: false }],
      /run 1: gpa 0x40000 \+ 1 pages is outside/,
    ],
    [[{ gpa: 0x8_0000, pageCount: 1, zero: true }], /gpa 0x80000 \+ 1 pages is outside guest RAM/],
    [[{ gpa: 60 * 4096, pageCount: 5, zero: false }], /outside guest RAM/],
    [[{ gpa: 0x10_0000 + 15 * 4096, pageCount: 0xffffffff, zero: true }], /outside guest RAM/],
    [[{ gpa: 2 ** 52, pageCount: 1, zero: true }], /outside guest RAM/],
  ];
  for (const [runs, re] of cases) {
    const r = await feed(concat(HELLO, CONFIG, ram(runs)));
    assert.match(r.error!.message, re);
    assert.ok(untouchedExcept(r.vm), "no byte written");
    assert.deepEqual(r.replies, ["ack", "nack"]);
  }
});

function rawRam(prefix: [number, number], runs: [bigint, number, number][], extra = 0): Uint8Array {
  const p = new Uint8Array(8 + runs.length * 16 + extra);
  const v = new DataView(p.buffer);
  v.setUint32(0, prefix[0], true);
  v.setUint32(4, prefix[1], true);
  runs.forEach(([gpa, n, f], i) => {
    v.setBigUint64(8 + i * 16, gpa, true);
    v.setUint32(16 + i * 16, n, true);
    v.setUint32(20 + i * 16, f, true);
  });
  return msg("ram", p);
}

Deno.test("receiveMigration rejects malformed RAM messages", async () => {
  const cases: [Uint8Array, RegExp][] = [
    [rawRam([1, 0], [[4096n + 8n, 1, 1]]), /gpa 0x1008 is not a page address/],
    [rawRam([1, 0], [[1n << 63n, 1, 1]]), /is not a page address/],
    [rawRam([1, 0], [[4096n, 0, 1]]), /page count is 0/],
    [rawRam([1, 0], [[4096n, 1, 6]]), /unknown flags 0x6/],
    [rawRam([1, 7], [[4096n, 1, 1]]), /reserved field is 7/],
    [rawRam([0, 0], [[4096n, 1, 1]]), /run count 0/],
    [rawRam([100000, 0], [[4096n, 1, 1]]), /run count 100000/],
    [rawRam([5, 0], [[4096n, 1, 1]]), /5 runs do not fit/],
    [rawRam([1, 0], [[4096n, 1, 1]], 4096), /length 4120 does not match its runs \(24 bytes\)/],
    [rawRam([1, 0], [[4096n, 2, 0]], 4096), /does not match its runs/],
  ];
  for (const [m, re] of cases) {
    const r = await feed(concat(HELLO, CONFIG, m));
    assert.match(r.error!.message, re);
    assert.ok(untouchedExcept(r.vm));
  }
});

Deno.test("receiveMigration rejects messages out of order", async () => {
  const state = msg("state", encodeSection(SECTION));
  const okRam = ram([{ gpa: 0, pageCount: 1, zero: true }]);
  const cases: [Uint8Array, RegExp][] = [
    [CONFIG, /expected 'hello' first, got 'config'/],
    [concat(HELLO, okRam), /expected 'config' after hello, got 'ram'/],
    [concat(HELLO, HELLO), /expected 'config' after hello, got 'hello'/],
    [concat(HELLO, CONFIG, HELLO), /expected 'complete' after RAM and state, got 'hello'/],
    [concat(HELLO, CONFIG, state, okRam), /'ram' after 'state'/],
    [concat(HELLO, CONFIG, state, state), /section 'serial:ttyS0' sent twice/],
    [
      concat(HELLO, CONFIG, state, digestMessage([], []), msg("complete", encodeComplete(2))),
      /sent 1 sections but announced 2/,
    ],
    [concat(HELLO, CONFIG, digestMessage([], []), okRam), /'ram' after 'digest'/],
    [concat(HELLO, CONFIG, msg("resumed")), /got 'resumed'/],
    [
      concat(HELLO, CONFIG, okRam, msg("cancel", encodeReason("operator said so"))),
      /Migration canceled by the source: operator said so/,
    ],
    [
      concat(msg("hello", encodeHello({ pageSize: 65536, product: "x" }))),
      /source page size 65536, destination 4096/,
    ],
    [concat(HELLO, msg("config", new TextEncoder().encode("{not json"))), /Cannot decode config/],
    [
      concat(HELLO, msg("config", new TextEncoder().encode('{"config":{"-m":5},"host":{}}'))),
      /'config.-m' is not a string/,
    ],
    [
      concat(HELLO, CONFIG, msg("state", new Uint8Array([0, 0]))),
      /'state' message of 2 bytes: need at least 11/,
    ],
    [concat(HELLO, CONFIG, msg("state", new Uint8Array(11))), /id length 0/],
    [
      concat(HELLO, CONFIG, msg("state", new Uint8Array([2, 0, 0xff, 0xfe, 0, 0, 0, 0, 0, 0, 0, 0]))),
      /not valid UTF-8/,
    ],
  ];
  for (const [m, re] of cases) {
    const r = await feed(m);
    assert.match(r.error!.message, re);
    assert.ok(untouchedExcept(r.vm, [[0, 4096]]));
  }
});

Deno.test("receiveMigration rejects random garbage cleanly", async () => {
  let seed = 7;
  function rand(): number {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    return seed;
  }
  for (let i = 0; i < 24; i++) {
    const junk = new Uint8Array(1 + rand() % 5000).map(() => rand() & 0xff);
    // Half of them behind a valid prefix, so the garbage reaches the deeper decoders.
    const input = i % 2 === 0 ? junk : concat(HELLO, CONFIG, encodeHeader("ram", junk.length), junk);
    const r = await feed(input);
    assert.ok(r.error, `garbage ${i} must fail`);
    assert.ok(!r.replies.includes("resumed"));
    assert.ok(untouchedExcept(r.vm), `garbage ${i} wrote RAM`);
  }
});
