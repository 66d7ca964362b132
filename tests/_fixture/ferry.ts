/**
 * Spawns ferry (its bundle, `deno run -A --no-config zig-out/js/ferry.js`, rebuilt when a source is newer;
 * `main.ts` with `FERRY_FROM_SOURCE=1`; or the binary in `FERRY_BIN`) for black-box
 * tests and reads its serial console (stdout) line by line.
 * @module
 */
import { QmpClient } from "./qmp_client.ts";
import { ferryRunArgs } from "../../scripts/bundle.ts";

/** Repository root. */
export const ROOT = new URL("../../", import.meta.url).pathname;
/** The probe guest built by `zig build`. */
export const PROBE = `${ROOT}zig-out/guest/probe.elf`;

/** A ferry process under test. */
export class Ferry {
  readonly child: Deno.ChildProcess;
  readonly lines: string[] = [];
  readonly stderrLines: string[] = [];
  readonly qmpPath: string | undefined;
  readonly #waiters: { re: RegExp; from: number; resolve: (m: RegExpMatchArray) => void }[] = [];
  readonly done: Promise<Deno.CommandStatus>;
  #pumps: Promise<void>[] = [];

  constructor(args: string[], options: { qmpPath?: string; env?: Record<string, string> } = {}) {
    const bin = options.env?.FERRY_BIN ?? Deno.env.get("FERRY_BIN");
    const cmd = bin
      ? new Deno.Command(bin, {
        args,
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
        env: options.env ?? {},
      })
      : new Deno.Command(Deno.execPath(), {
        args: [...ferryRunArgs(), ...args],
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
        env: options.env ?? {},
      });
    this.child = cmd.spawn();
    this.qmpPath = options.qmpPath;
    this.#pumps.push(this.#pump(this.child.stdout, this.lines, true));
    this.#pumps.push(this.#pump(this.child.stderr, this.stderrLines, false));
    this.done = this.child.status;
  }

  async #pump(stream: ReadableStream<Uint8Array>, into: string[], match: boolean): Promise<void> {
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of stream) {
      buf += dec.decode(chunk, { stream: true });
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        into.push(buf.slice(0, i).replace(/\r$/, ""));
        buf = buf.slice(i + 1);
        if (match) this.#check();
      }
    }
    if (buf) into.push(buf);
    if (match) this.#check();
  }

  #check(): void {
    for (let w = this.#waiters.length - 1; w >= 0; w--) {
      const waiter = this.#waiters[w]!;
      for (let i = waiter.from; i < this.lines.length; i++) {
        const m = this.lines[i]!.match(waiter.re);
        if (m) {
          this.#waiters.splice(w, 1);
          waiter.resolve(m);
          break;
        }
      }
    }
  }

  /**
   * Waits for a serial line matching `re`, looking at lines from index `from` on.
   * Rejects on timeout or when ferry exits first, with the output so far.
   */
  waitLine(re: RegExp, timeoutMs = 20000, from = 0): Promise<RegExpMatchArray> {
    return new Promise((resolve, reject) => {
      let finished = false;
      const t = setTimeout(() => {
        finished = true;
        reject(new Error(`No serial line ${re} in ${timeoutMs} ms.\n${this.transcript()}`));
      }, timeoutMs);
      this.done.then(() =>
        setTimeout(() => {
          if (!finished) {
            finished = true;
            clearTimeout(t);
            reject(new Error(`ferry exited before ${re}.\n${this.transcript()}`));
          }
        }, 200)
      );
      this.#waiters.push({
        re,
        from,
        resolve: (m) => {
          if (finished) return;
          finished = true;
          clearTimeout(t);
          resolve(m);
        },
      });
      this.#check();
    });
  }

  /** Serial and stderr so far, for failure messages. */
  transcript(): string {
    return `--- serial (last 20) ---\n${this.lines.slice(-20).join("\n")}\n--- stderr ---\n${
      this.stderrLines.slice(-30).join("\n")
    }`;
  }

  /** Latest `count=` of `PROBE PROGRESS cpu=<cpu>`, or -1. */
  progress(cpu: number): number {
    for (let i = this.lines.length - 1; i >= 0; i--) {
      const m = this.lines[i]!.match(/PROBE PROGRESS cpu=(\d+) count=(\d+)/);
      if (m && Number(m[1]) === cpu) return Number(m[2]);
    }
    return -1;
  }

  async qmp(): Promise<QmpClient> {
    if (!this.qmpPath) throw new Error("This ferry was started without -qmp");
    try {
      return await QmpClient.connect(this.qmpPath);
    } catch (e) {
      // Say why: ferry's own stderr (a port in use, a bad option) is the cause, not the socket.
      throw new Error(`${(e as Error).message}\n${this.transcript()}`, { cause: e });
    }
  }

  /** Kills ferry (if running) and waits for its streams. */
  async kill(signal: Deno.Signal = "SIGKILL"): Promise<Deno.CommandStatus> {
    try {
      this.child.kill(signal);
    } catch { /* already exited */ }
    const st = await this.done;
    try {
      await this.child.stdin.close();
    } catch { /* closed */ }
    await Promise.all(this.#pumps);
    return st;
  }

  /** Waits for exit (bounded) and returns the status. */
  async wait(timeoutMs = 20000): Promise<Deno.CommandStatus> {
    const t = setTimeout(() => this.kill(), timeoutMs);
    const st = await this.done;
    clearTimeout(t);
    try {
      await this.child.stdin.close();
    } catch { /* closed */ }
    await Promise.all(this.#pumps);
    return st;
  }
}

/** A fresh temp dir for sockets and files. */
export function tempDir(): string {
  return Deno.makeTempDirSync({ prefix: "ferry-test-" });
}

/** Standard probe-guest arguments. */
export function probeArgs(
  opts: { append?: string; smp?: number; mem?: string; qmp?: string; extra?: string[] } = {},
): string[] {
  const a = ["-machine", "q35", "-m", opts.mem ?? "256M", "-smp", String(opts.smp ?? 1), "-kernel", PROBE];
  a.push("-append", opts.append ?? "mode=idle interval_ms=100");
  a.push("-serial", "stdio");
  if (opts.qmp) a.push("-qmp", `unix:${opts.qmp},server,nowait`);
  if (opts.extra) a.push(...opts.extra);
  return a;
}

/**
 * Waits until a destination started with `-incoming` listens: its `query-migrate` reports
 * `setup` (the listener is created in the same step), or for `unix:` without QMP, the socket file.
 */
export async function waitIncoming(target: QmpClient | string, timeoutMs = 15000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (typeof target === "string") {
      try {
        if (Deno.statSync(target).isSocket) return;
      } catch { /* not yet */ }
    } else {
      const r = await target.call("query-migrate") as { status?: string };
      if (r.status === "setup") return;
    }
    if (Date.now() > deadline) throw new Error(`The destination is not listening after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** True when `path` exists (any kind of file). */
export function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** The full path of program `name` on PATH, or undefined. */
export function onPath(name: string): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    const p = `${dir}/${name}`;
    try {
      if (Deno.statSync(p).isFile) return p;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/** Why tests that boot the probe guest on KVM cannot run here, or undefined when they can. */
export function kvmSkipReason(): string | undefined {
  if (!exists(PROBE)) return "zig-out/guest/probe.elf is not built";
  if (!exists("/dev/kvm")) return "/dev/kvm is missing";
  return undefined;
}
