/**
 * Logging for ferry: every line goes to stderr (stdout may be the guest's serial console) or to the
 * file given with `-D`. Level from `FERRY_LOG` (error, warn, info, debug; default warn).
 *
 * @example
 * ```ts
 * const log = logger("virtio-blk:rootfs");
 * log.warnLimited("Descriptor chain too short: len=%d", 3);
 * ```
 * @module
 */
import { formatLine } from "./format.ts";

const LEVELS = { error: 0, warn: 1, info: 2, debug: 3 } as const;
/** A log level name. */
export type LogLevel = keyof typeof LEVELS;

let threshold: number = LEVELS[(Deno.env.get("FERRY_LOG") ?? "warn") as LogLevel] ?? LEVELS.warn;
let sink: ((line: string) => void) | undefined;
const encoder = new TextEncoder();

/** Sets the level and, optionally, a file to append log lines to (QEMU's `-D`). */
export function configureLog(options: { level?: LogLevel; file?: string }): void {
  if (options.level !== undefined) threshold = LEVELS[options.level];
  if (options.file !== undefined) {
    const f = Deno.openSync(options.file, { append: true, create: true });
    sink = (line) => void f.writeSync(encoder.encode(line));
  }
}

/** A component's logger. */
export interface Logger {
  error(msg: string, ...args: unknown[]): void;
  warn(msg: string, ...args: unknown[]): void;
  info(msg: string, ...args: unknown[]): void;
  debug(msg: string, ...args: unknown[]): void;
  /** A warning a guest can trigger: at most 10 lines per 5 s per message, then a count. */
  warnLimited(msg: string, ...args: unknown[]): void;
}

function emit(level: LogLevel, component: string, msg: string, args: unknown[]): void {
  if (LEVELS[level] > threshold) return;
  const line = `${new Date().toISOString()} ${level.toUpperCase()} ${component}: ${
    formatLine(msg, ...args)
  }\n`;
  if (sink) sink(line);
  else Deno.stderr.writeSync(encoder.encode(line));
}

/**
 * Returns the logger for one component.
 * @param component a short stable name, e.g. `"migration"` or `"serial:ttyS0"`
 */
export function logger(component: string): Logger {
  const limits = new Map<string, { start: number; count: number }>();
  return {
    error: (m, ...a) => emit("error", component, m, a),
    warn: (m, ...a) => emit("warn", component, m, a),
    info: (m, ...a) => emit("info", component, m, a),
    debug: (m, ...a) => emit("debug", component, m, a),
    warnLimited(m, ...a) {
      const now = Date.now();
      let l = limits.get(m);
      if (!l || now - l.start > 5000) {
        if (l && l.count > 10) emit("warn", component, `(${l.count - 10} more like: ${m})`, []);
        l = { start: now, count: 0 };
        limits.set(m, l);
      }
      if (++l.count <= 10) emit("warn", component, m, a);
    },
  };
}
