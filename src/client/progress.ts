/**
 * The migration progress view: one line per `query-migrate` reply (a bar, bytes sent, remaining,
 * dirty rate, pass, expected downtime) and a final summary.
 * @module
 */

/** Formats bytes as a short human size: `512 B`, `3.2 MiB`, `1.0 GiB`. */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 1024) return `${Math.max(0, Math.round(n || 0))} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

function num(v: unknown): number {
  return typeof v === "number" ? v : typeof v === "bigint" ? Number(v) : 0;
}

/**
 * One progress line for a `query-migrate` return object.
 * @param info the `query-migrate` return
 * @param width bar width in characters
 */
export function progressLine(info: Record<string, unknown>, width = 24): string {
  const status = String(info.status ?? "none");
  const ram = (info.ram ?? {}) as Record<string, unknown>;
  const total = num(ram.total), remaining = num(ram.remaining), sent = num(ram.transferred);
  const done = status === "completed"
    ? 1
    : status === "setup" || total <= 0
    ? 0
    : Math.min(1, Math.max(0, (total - remaining) / total));
  const filled = Math.round(done * width);
  const bar = "[" + "#".repeat(filled) + ".".repeat(width - filled) + "]";
  const parts = [
    `${status.padEnd(9)} ${bar} ${(done * 100).toFixed(0).padStart(3)}%`,
    `sent ${formatBytes(sent)}`,
    `remaining ${formatBytes(remaining)}`,
    `dirty ${num(ram["dirty-pages-rate"])} pages/s`,
    `pass ${num(ram["dirty-sync-count"])}`,
  ];
  if (info["expected-downtime"] !== undefined) {
    parts.push(`expected downtime ${num(info["expected-downtime"])} ms`);
  }
  if (ram.mbps !== undefined) parts.push(`${num(ram.mbps).toFixed(0)} Mbit/s`);
  return parts.join("  ");
}

/** The final summary after a migration ends. */
export function summaryLines(info: Record<string, unknown>): string[] {
  const ram = (info.ram ?? {}) as Record<string, unknown>;
  const lines = [`migration ${info.status}`];
  if (info["error-desc"]) lines.push(`  error: ${info["error-desc"]}`);
  if (info["total-time"] !== undefined) lines.push(`  total time ${num(info["total-time"])} ms`);
  if (info.downtime !== undefined) lines.push(`  downtime ${num(info.downtime)} ms`);
  if (info["setup-time"] !== undefined) lines.push(`  setup time ${num(info["setup-time"])} ms`);
  if (ram.transferred !== undefined) {
    lines.push(
      `  transferred ${formatBytes(num(ram.transferred))} of ${formatBytes(num(ram.total))} RAM` +
        ` (${num(ram.normal)} pages sent, ${num(ram.duplicate)} zero pages skipped)`,
    );
    lines.push(`  dirty passes ${num(ram["dirty-sync-count"])}, ${num(ram.mbps).toFixed(0)} Mbit/s`);
  }
  return lines;
}
