/**
 * `deno task bench [NAME...]`: ferry beside QEMU, ratios only (absolute times on these shared
 * machines are noise). Names: boot, native (the probe guest's own native-vs-emulated loop).
 * With no name, runs all. Writes bench/report.md.
 * @module
 */
import { benchBoot } from "./boot.ts";
import { benchNative } from "./native.ts";
import { out, ROOT } from "./_util.ts";

const all: Record<string, () => Promise<Record<string, string | number>[]>> = {
  boot: () => benchBoot(),
  native: () => benchNative(),
};

const names = Deno.args.length > 0 ? Deno.args : Object.keys(all);
const rows: Record<string, string | number>[] = [];
for (const n of names) {
  const f = all[n];
  if (!f) {
    out(`bench: unknown benchmark '${n}': choose from ${Object.keys(all).join(", ")}`);
    Deno.exit(2);
  }
  rows.push(...await f());
  out();
}
const lines = ["# ferry benchmark report", "", `Run: ${new Date().toISOString()}`, ""];
for (const r of rows) {
  lines.push("| " + Object.keys(r).join(" | ") + " |", "|" + Object.keys(r).map(() => "---").join("|") + "|");
  lines.push("| " + Object.values(r).join(" | ") + " |", "");
}
Deno.writeTextFileSync(`${ROOT}bench/report.md`, lines.join("\n"));
out(`report: bench/report.md`);
