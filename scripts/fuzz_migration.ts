/**
 * Long migration-stream fuzz runs: `deno task fuzz-migration [--cases N] [--seed S] [--out DIR]
 * [--stall-ms MS]`. Captures one real ferry migration stream (tests/_fixture/fuzz.ts), mutates it
 * round after round (228 cases a round over 14 classes, a new seed each round) and feeds every case
 * to ferry's real receive code into a real KVM VM. Every input that ran the VM or failed in an
 * unexpected way is kept in DIR (`<class>-<n>.bin` + `.txt`), and a per-class count is printed.
 * Exit status 1 when any mutated stream ran the VM (wire protocol 2 refuses every one).
 */
import { parseArgs } from "node:util";
import { captureStream, FUZZ_CLASSES, InProcessDestination, makeCases } from "../tests/_fixture/fuzz.ts";

const { values } = parseArgs({
  args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
  options: {
    cases: { type: "string", default: "2000" },
    seed: { type: "string", default: String(Date.now() % 100000) },
    out: { type: "string", default: "fuzz-failures" },
    "stall-ms": { type: "string", default: "300" },
  },
});
const want = Number(values.cases);
const stallMs = Number(values["stall-ms"]);
let seed = Number(values.seed);
const out = values.out!;
const enc = new TextEncoder();
const say = (s: string) => Deno.stdout.writeSync(enc.encode(s + "\n"));

say(`capturing a migration stream (seed ${seed}, ${want} cases, failures in ${out}/)`);
const capture = await captureStream();
say(`captured ${capture.bytes.length} bytes in ${capture.messages.length} messages`);
const dst = await InProcessDestination.create(capture);
const control = await dst.run(
  { klass: "garbage", what: "unmutated", bytes: capture.bytes, stall: false },
  stallMs,
);
if (!control.ran) throw new Error(`the unmutated stream does not run: ${control.error}`);
const counts = new Map<string, { cases: number; refused: number; ran: number; odd: number }>();
let done = 0;
let kept = 0;
let bad = 0;
const t0 = performance.now();
try {
  while (done < want) {
    for (const c of makeCases(capture, seed++)) {
      if (done >= want) break;
      const r = await dst.run(c, stallMs);
      done++;
      const k = counts.get(c.klass) ?? { cases: 0, refused: 0, ran: 0, odd: 0 };
      counts.set(c.klass, k);
      k.cases++;
      const odd = !r.ran && (!r.error || r.error.includes("\n") || (c.stall && !/stalled/.test(r.error)));
      if (r.ran) k.ran++;
      else k.refused++;
      if (odd) k.odd++;
      if (r.ran || odd) {
        Deno.mkdirSync(out, { recursive: true });
        const name = `${out}/${c.klass}-${kept++}`;
        Deno.writeFileSync(`${name}.bin`, c.bytes);
        Deno.writeTextFileSync(
          `${name}.txt`,
          `${c.klass}: ${c.what}\n${r.ran ? "ran the VM" : `refused oddly: ${r.error}`}\nstall: ${c.stall}\n`,
        );
        if (r.ran) bad++;
      }
    }
  }
} finally {
  await dst.close();
}
say(`${done} cases in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
for (const k of FUZZ_CLASSES) {
  const c = counts.get(k);
  if (!c) continue;
  say(
    `  ${k.padEnd(20)} ${String(c.cases).padStart(5)} cases  ${String(c.refused).padStart(5)} refused  ${
      String(c.ran).padStart(4)
    } ran  ${c.odd} odd`,
  );
}
say(
  bad === 0 ? "no mutated stream ran the VM" : `${bad} mutated streams ran the VM`,
);
Deno.exit(bad === 0 ? 0 : 1);
