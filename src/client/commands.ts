/**
 * ferry's operator client (in the spirit of `ch-remote`), in the same executable:
 *
 * ```
 * ferry qmp --socket PATH COMMAND [JSON-ARGS]       print the reply's "return" as JSON
 * ferry migrate --socket PATH --uri URI [--watch] [--downtime-limit MS] [--max-bandwidth BYTES]
 * ferry migrate-status --socket PATH [--watch]
 * ```
 * Exit status: 0 on success (a `return`, or a `completed` migration), 1 on a QMP error or a failed
 * or canceled migration, 2 on bad usage.
 *
 * `node:util` (for `parseArgs`) loads only when a subcommand runs: a VMM process never pays for
 * Deno's Node layer.
 * @module
 */
import { QmpClient } from "./qmp_client.ts";
import { progressLine, summaryLines } from "./progress.ts";

const enc = new TextEncoder();
function outLine(s: string): void {
  Deno.stdout.writeSync(enc.encode(s + "\n"));
}
function errLine(s: string): void {
  Deno.stderr.writeSync(enc.encode(s + "\n"));
}

/** Subcommand names `main` dispatches here. */
export const CLIENT_COMMANDS = ["qmp", "migrate", "migrate-status"] as const;

const USAGE = `usage:
  ferry qmp --socket PATH COMMAND [JSON-ARGS]
  ferry migrate --socket PATH --uri tcp:HOST:PORT|unix:PATH|file:PATH [--watch] [--downtime-limit MS] [--max-bandwidth BYTES]
  ferry migrate-status --socket PATH [--watch]`;

async function watch(q: QmpClient, intervalMs: number, tty: boolean): Promise<Record<string, unknown>> {
  let last = "";
  for (;;) {
    const info = await q.call("query-migrate") as Record<string, unknown>;
    const status = String(info.status ?? "none");
    const line = progressLine(info);
    if (tty) Deno.stdout.writeSync(enc.encode(`\r${line}\x1b[K`));
    else if (line !== last) outLine(line);
    last = line;
    if (["completed", "failed", "canceled", "none"].includes(status)) {
      if (tty) outLine("");
      return info;
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * Runs a client subcommand; returns the exit code.
 * @param name one of {@linkcode CLIENT_COMMANDS}
 * @param args the arguments after the subcommand
 */
export async function runClient(name: string, args: string[]): Promise<number> {
  const { parseArgs } = await import("node:util");
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        socket: { type: "string" },
        uri: { type: "string" },
        watch: { type: "boolean", default: false },
        "downtime-limit": { type: "string" },
        "max-bandwidth": { type: "string" },
        interval: { type: "string", default: "250" },
      },
    });
  } catch (e) {
    errLine(`ferry ${name}: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  const v = parsed.values;
  if (!v.socket) {
    errLine(`ferry ${name}: --socket PATH is required\n${USAGE}`);
    return 2;
  }
  let q: QmpClient;
  try {
    q = await QmpClient.connect(v.socket, 3000);
  } catch (e) {
    errLine(
      `ferry ${name}: Cannot connect to QMP socket '${v.socket}': ${
        (e as Error).cause ?? (e as Error).message
      }`,
    );
    return 1;
  }
  const tty = Deno.stdout.isTerminal();
  try {
    if (name === "qmp") {
      const [command, json] = parsed.positionals;
      if (!command) {
        errLine(`ferry qmp: a COMMAND is required\n${USAGE}`);
        return 2;
      }
      let qargs: Record<string, unknown> | undefined;
      if (json !== undefined) {
        try {
          qargs = JSON.parse(json);
        } catch (e) {
          errLine(`ferry qmp: Cannot parse JSON-ARGS '${json}': ${(e as Error).message}`);
          return 2;
        }
      }
      const r = await q.execute(command, qargs);
      if ("error" in r) {
        const err = r.error as { class: string; desc: string };
        errLine(`ferry qmp: ${command}: ${err.class}: ${err.desc}`);
        return 1;
      }
      outLine(JSON.stringify(r.return));
      return 0;
    }
    const interval = Math.max(20, Number(v.interval) || 250);
    if (name === "migrate") {
      if (!v.uri) {
        errLine(`ferry migrate: --uri is required\n${USAGE}`);
        return 2;
      }
      const params: Record<string, number> = {};
      for (const k of ["downtime-limit", "max-bandwidth"] as const) {
        const s = v[k];
        if (s !== undefined) {
          const n = Number(s);
          if (!Number.isInteger(n) || n < 0) {
            errLine(`ferry migrate: --${k} must be a non-negative integer, got '${s}'`);
            return 2;
          }
          params[k] = n;
        }
      }
      if (Object.keys(params).length > 0) {
        const r = await q.execute("migrate-set-parameters", params);
        if ("error" in r) {
          errLine(`ferry migrate: ${(r.error as { desc: string }).desc}`);
          return 1;
        }
      }
      const r = await q.execute("migrate", { uri: v.uri });
      if ("error" in r) {
        errLine(`ferry migrate: ${(r.error as { desc: string }).desc}`);
        return 1;
      }
      if (!v.watch) {
        outLine("migration started");
        return 0;
      }
    }
    const info = v.watch || name === "migrate"
      ? await watch(q, interval, tty)
      : await q.call("query-migrate") as Record<string, unknown>;
    if (!v.watch && name === "migrate-status") outLine(progressLine(info));
    for (const l of summaryLines(info)) outLine(l);
    return info.status === "completed" || (name === "migrate-status" && !v.watch) ? 0 : 1;
  } finally {
    await q.close();
  }
}
