/**
 * bench/report.md: markdown tables of rows (key → value), one table per run of consecutive rows
 * with the same keys. A run of some benchmarks replaces their rows and keeps the others' rows
 * from the previous report (a row belongs to the benchmark named by the first word of `bench`).
 * @module
 */

/** One report row. */
export type Row = Record<string, string | number>;

function cells(line: string): string[] {
  const inner = line.trim().replace(/^\|/, "").replace(/(?<!\\)\|$/, "");
  return inner.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

/** The rows of every table in a report written by {@linkcode renderReport} (or its predecessor). */
export function readReportRows(text: string): Row[] {
  const rows: Row[] = [];
  const lines = text.split("\n");
  for (let i = 0; i + 1 < lines.length; i++) {
    if (!lines[i]!.startsWith("|") || !/^\|(\s*:?-+:?\s*\|)+\s*$/.test(lines[i + 1]!)) continue;
    const keys = cells(lines[i]!);
    let j = i + 2;
    for (; j < lines.length && lines[j]!.startsWith("|"); j++) {
      const v = cells(lines[j]!);
      const row: Row = {};
      keys.forEach((k, n) => row[k] = v[n] ?? "");
      rows.push(row);
    }
    i = j - 1;
  }
  return rows;
}

/** The benchmark a row belongs to: the first word of its `bench` cell. */
function benchOf(r: Row): string {
  return String(r.bench ?? "").split(" ")[0]!;
}

/** Old rows of benchmarks not run now, then the new rows, ordered as `order` lists benchmarks. */
export function mergeRows(old: Row[], fresh: Row[], ran: string[], order: string[]): Row[] {
  const kept = old.filter((r) => !ran.includes(benchOf(r)));
  const rank = (r: Row) => {
    const i = order.indexOf(benchOf(r));
    return i < 0 ? order.length : i;
  };
  return [...kept, ...fresh].map((r, i) => ({ r, i })).sort((a, b) => rank(a.r) - rank(b.r) || a.i - b.i)
    .map((x) => x.r);
}

/** The report text. */
export function renderReport(rows: Row[], now = new Date()): string {
  const lines = ["# ferry benchmark report", "", `Updated: ${now.toISOString()}`, ""];
  let keys = "";
  for (const r of rows) {
    const k = Object.keys(r);
    if (k.join("|") !== keys) {
      if (keys) lines.push("");
      keys = k.join("|");
      lines.push("| " + k.join(" | ") + " |", "|" + k.map(() => "---").join("|") + "|");
    }
    lines.push("| " + Object.values(r).map((v) => String(v).replace(/\|/g, "\\|")).join(" | ") + " |");
  }
  lines.push("");
  if (rows.some((r) => benchOf(r) === "migrate")) {
    lines.push("Migration timeline (dirtying scenario): [migrate-timeline.svg](migrate-timeline.svg)", "");
  }
  return lines.join("\n");
}
