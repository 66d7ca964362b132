/**
 * printf-style formatting for log lines, the subset of Node's `util.format` ferry's messages use.
 * It lives here so that logging does not load Deno's Node compatibility layer (`node:util`), which
 * costs every isolate that logs (the main thread and each Worker) ~1.5 MiB of V8 heap, ~6 MiB of
 * resident memory and ~10 ms at start.
 * @module
 */

function inspect(v: unknown): string {
  return Deno.inspect(v, { depth: 4, colors: false });
}

function asString(v: unknown): string {
  if (typeof v === "string") return v;
  if (typeof v === "bigint") return `${v}n`;
  if (typeof v === "symbol") return v.toString();
  if (v instanceof Error) return v.stack ?? `${v.name}: ${v.message}`;
  return typeof v === "object" && v !== null ? inspect(v) : String(v);
}

function asNumber(v: unknown, integer: boolean): string {
  if (typeof v === "bigint") return `${v}n`;
  if (typeof v === "symbol" || (typeof v === "object" && v !== null)) return "NaN";
  const n = Number(v);
  return String(integer ? Math.trunc(n) : n);
}

/**
 * Replaces `%s` (string), `%d`/`%i` (integer), `%f` (number), `%o`/`%O`/`%j` (inspected value)
 * in `template` with `args` in order, and `%%` with `%`. Arguments left over are appended,
 * separated by spaces; a placeholder without an argument stays as written (as in Node).
 * @param template the message, e.g. `"read %d bytes from %s"`
 * @param args the values for the placeholders
 * @returns the formatted line
 * @example
 * ```ts
 * formatLine("read %d bytes from %s", 512, "disk"); // "read 512 bytes from disk"
 * ```
 */
export function formatLine(template: string, ...args: unknown[]): string {
  let next = 0;
  const text = template.replace(/%[sdifoOj%]/g, (spec) => {
    if (spec === "%%") return "%";
    if (next >= args.length) return spec;
    const v = args[next++];
    switch (spec) {
      case "%s":
        return asString(v);
      case "%d":
      case "%i":
        return asNumber(v, spec === "%i");
      case "%f":
        return asNumber(v, false);
      default:
        return inspect(v);
    }
  });
  const rest = args.slice(next).map(asString);
  return rest.length ? [text, ...rest].join(" ") : text;
}
