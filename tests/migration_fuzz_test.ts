/**
 * Black box, bounded: one real ferry migration stream (a small probe guest) is captured and
 * mutated 228 ways over 14 classes (byte/bit flips in RAM pages, in a RAM copy that is sent again
 * later, in device/vCPU state, in headers, in run tables and in the digest; truncations;
 * duplicated, removed and reordered messages; huge lengths; garbage; a correct prefix then a
 * stall). Every case goes to ferry's real receive code into a real KVM VM (in-process, one VM for
 * all cases); one case of several classes also goes to a real `ferry -incoming unix:PATH` process.
 *
 * With wire protocol 2 (a sequence number and a CRC32C in every message) no mutated stream runs
 * the VM, in any class: each is refused with one error line.
 */
import assert from "node:assert/strict";
import {
  type Capture,
  captureStream,
  CASES_PER_CLASS,
  feedFerry,
  FUZZ_CLASSES,
  type FuzzCase,
  type FuzzClass,
  InProcessDestination,
  makeCases,
} from "./_fixture/fuzz.ts";

const STALL_MS = 300;

/** Classes whose every case is a damaged or misplaced whole message: refused by CRC32C or sequence number. */
const NAMED: FuzzClass[] = [
  "ram-byte",
  "ram-bit",
  "ram-superseded-copy",
  "state",
  "digest",
  "duplicate",
  "reorder",
];

/** Classes also fed to a real `ferry -incoming unix:PATH` process, one case each. */
const THROUGH_FERRY: FuzzClass[] = [
  "ram-bit",
  "ram-superseded-copy",
  "state",
  "header",
  "reorder",
  "duplicate",
  "truncate",
  "garbage",
  "stall",
];

Deno.test("fuzzing a captured migration stream 228 ways: no mutated stream runs the VM", async () => {
  const capture: Capture = await captureStream();
  const seed = 0x5eed;
  const total = Object.values(CASES_PER_CLASS).reduce((a, b) => a + b, 0);
  assert.ok(total >= 200, `${total} cases`);

  // One case per class through real ferry processes, two at a time, while the in-process cases
  // run (the stall case takes ferry's 10 s stall timeout).
  const sample: FuzzCase[] = [];
  for (const c of makeCases(capture, seed)) {
    if (THROUGH_FERRY.includes(c.klass) && !sample.some((x) => x.klass === c.klass)) sample.push(c);
  }
  const viaFerry = async () => {
    for (let c = sample.shift(); c; c = sample.shift()) {
      const r = await feedFerry(c);
      assert.equal(r.ran, false, `${c.klass} ${c.what}: ferry ran the guest`);
      assert.notEqual(r.code, 0, `${c.klass} ${c.what}: ferry exits non-zero`);
      assert.match(r.error ?? "", /^ferry: incoming migration failed: /, `${c.klass} ${c.what}`);
      if (c.stall) assert.match(r.error!, /stalled/);
    }
  };
  const ferries = Promise.all([viaFerry(), viaFerry()]);
  ferries.catch(() => {});

  const dst = await InProcessDestination.create(capture);
  const ran: Record<string, FuzzCase[]> = {};
  const counts: Record<string, { cases: number; refused: number }> = {};
  try {
    // The unmutated stream runs: the destination and the capture are sound.
    const control = await dst.run(
      { klass: "garbage", what: "unmutated", bytes: capture.bytes, stall: false },
      STALL_MS,
    );
    assert.equal(control.ran, true, control.error);
    for (const c of makeCases(capture, seed)) {
      const r = await dst.run(c, STALL_MS);
      const k = (counts[c.klass] ??= { cases: 0, refused: 0 });
      k.cases++;
      if (r.ran) {
        (ran[c.klass] ??= []).push(c);
      } else {
        k.refused++;
        assert.ok(r.error && !/\n/.test(r.error), `${c.klass} ${c.what}: one error line, got ${r.error}`);
        if (c.stall) assert.match(r.error, /stalled/, `${c.what}: reported as a stall`);
        if (c.klass === "run-table") {
          // Refused as its run table is decoded (before the message's CRC32C is complete), naming it.
          assert.match(r.error, /message #\d+ \('ram'\) at stream offset \d+/, `${c.klass} ${c.what}`);
        }
        if (NAMED.includes(c.klass)) {
          // Refused by the message's CRC32C or sequence number, naming the message and its offset.
          assert.match(
            r.error,
            /^Cannot accept migration message #\d+ \('[a-z]+'\) at stream offset \d+: (CRC32C mismatch|sequence number)/,
            `${c.klass} ${c.what}`,
          );
        }
      }
    }
  } finally {
    await dst.close();
  }
  const cases = Object.values(counts).reduce((a, k) => a + k.cases, 0);
  assert.ok(cases >= 200, `${cases} cases ran`);
  const report = FUZZ_CLASSES.map((k) => `${k}: ${counts[k]?.refused ?? 0}/${counts[k]?.cases ?? 0} refused`);
  Deno.stderr.writeSync(new TextEncoder().encode(`migration fuzz (in-process): ${report.join(", ")}\n`));
  for (const k of FUZZ_CLASSES) {
    assert.ok((counts[k]?.cases ?? 0) > 0, `class ${k} has cases`);
    assert.deepEqual((ran[k] ?? []).map((c) => c.what), [], `class ${k}: these mutations ran the VM`);
  }
  await ferries;
});
