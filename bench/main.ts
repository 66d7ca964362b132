/**
 * `deno task bench [NAME...]`: ferry beside QEMU, ratios only (absolute times on these shared
 * machines are noise). Names: boot, native (the probe guest's own native-vs-emulated loop),
 * migrate (live migration; options `--runs N --scenario idle,dirty,filled --rate PAGES_PER_S --fill-rate N --bandwidth 1G,128M --only WORDS`,
 * see migrate.ts), io (virtio-blk and virtio-net throughput; options `--runs N --cache writeback,direct
 * --only WORDS`, see io.ts). With no name, runs all. Writes bench/report.md: the rows of the benchmarks run
 * replace theirs, the other benchmarks' rows from the previous report are kept.
 * @module
 */
import { benchBoot } from "./boot.ts";
import { benchNative } from "./native.ts";
import { benchMigrate, migrateOptions } from "./migrate.ts";
import { benchIo, ioOptions } from "./io.ts";
import { mergeRows, readReportRows, renderReport } from "./_report.ts";
import { out, ROOT } from "./_util.ts";

// `--key value` or `--key=value` options (used by migrate); everything else names a benchmark.
const flags: Record<string, string> = {};
const named: string[] = [];
for (let i = 0; i < Deno.args.length; i++) {
  const a = Deno.args[i]!;
  const m = a.match(/^--([^=]+)(?:=(.*))?$/);
  if (!m) named.push(a);
  else flags[m[1]!] = m[2] ?? Deno.args[++i] ?? "";
}

const all: Record<string, () => Promise<Record<string, string | number>[]>> = {
  boot: () => benchBoot(),
  native: () => benchNative(),
  migrate: () => benchMigrate(migrateOptions(flags)),
  io: () => benchIo(ioOptions(flags)),
};

const names = named.length > 0 ? named : Object.keys(all);
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
const path = `${ROOT}bench/report.md`;
let previous = "";
try {
  previous = Deno.readTextFileSync(path);
} catch { /* first report */ }
Deno.writeTextFileSync(
  path,
  renderReport(mergeRows(readReportRows(previous), rows, names, Object.keys(all))),
);
out(`report: bench/report.md`);
