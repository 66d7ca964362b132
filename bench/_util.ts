/**
 * Shared helpers for benchmarks: spawn a VMM, wait for a serial line, read its RSS, summarise.
 * @module
 */

import { ferryRunArgs } from "../scripts/bundle.ts";

export const ROOT = new URL("../", import.meta.url).pathname;
export const PROBE = `${ROOT}zig-out/guest/probe.elf`;
const encoder = new TextEncoder();

/** Prints a line to stdout (benchmarks report to stdout). */
export function out(line = ""): void {
  Deno.stdout.writeSync(encoder.encode(line + "\n"));
}

/** The median of `xs`. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/**
 * The command that runs ferry: a compiled binary from `FERRY_BIN`, else `deno run` of its bundle
 * (`--no-config zig-out/js/ferry.js`, rebuilt when stale; `main.ts` with `FERRY_FROM_SOURCE=1`).
 */
export function ferryCommand(args: string[]): { cmd: string; args: string[] } {
  const bin = Deno.env.get("FERRY_BIN");
  if (bin) return { cmd: bin, args };
  const prof = Deno.env.get("BENCH_CPU_PROF");
  const extra = prof ? [`--cpu-prof`, `--cpu-prof-dir=${prof}`] : [];
  return { cmd: Deno.execPath(), args: [...ferryRunArgs(extra), ...args] };
}

/** QEMU from Debian, or undefined when it is not installed. */
export function qemuBinary(): string | undefined {
  for (const p of ["/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64"]) {
    try {
      if (Deno.statSync(p).isFile) return p;
    } catch { /* next */ }
  }
  return undefined;
}

/**
 * QEMU's fastest way to boot the probe guest here: q35 with KVM, `-cpu host` minus
 * arch-capabilities (QEMU 7.2 aborts on this host's MSR 0x10a otherwise), qboot firmware when
 * Debian ships it (SeaBIOS adds seconds), no default devices.
 */
export function qemuBaseArgs(): string[] {
  const a = ["-machine", "q35,accel=kvm", "-cpu", "host,-arch-capabilities", "-nodefaults", "-nographic"];
  try {
    if (Deno.statSync("/usr/share/qemu/qboot.rom").isFile) a.push("-bios", "/usr/share/qemu/qboot.rom");
  } catch { /* SeaBIOS */ }
  return a;
}

/**
 * CPU seconds of a process from /proc/PID/stat (`"self"`: this one): utime + stime of all its
 * threads, plus its waited-for children's (cutime + cstime) with `children` (QEMU's `exec:cat`).
 * @throws {Deno.errors.NotFound} when the process is gone
 */
export function cpuSeconds(pid: number | "self", options: { children?: boolean } = {}): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // f[0] is field 3 (state)
  const own = Number(f[11]) + Number(f[12]);
  return (options.children ? own + Number(f[13]) + Number(f[14]) : own) / CLOCK_TICKS;
}

/** USER_HZ: /proc clock ticks per second on Linux. */
const CLOCK_TICKS = 100;

/** Resident set size of `pid` and its threads, in KiB (VmRSS). */
export function rssKiB(pid: number): number {
  try {
    const s = Deno.readTextFileSync(`/proc/${pid}/status`);
    const m = s.match(/VmRSS:\s+(\d+) kB/);
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

/** A spawned VMM whose stdout is scanned line by line. */
export class Spawned {
  readonly child: Deno.ChildProcess;
  readonly lines: string[] = [];
  readonly #waiters: { re: RegExp; resolve: (l: string) => void }[] = [];
  readonly #pump: Promise<void>;

  constructor(cmd: string, args: string[]) {
    this.child = new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" }).spawn();
    this.#pump = this.#read();
    void this.child.stderr.pipeTo(new WritableStream());
  }

  async #read(): Promise<void> {
    const dec = new TextDecoder();
    let buf = "";
    for await (const c of this.child.stdout) {
      buf += dec.decode(c, { stream: true });
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const l = buf.slice(0, i).replace(/\r$/, "");
        buf = buf.slice(i + 1);
        this.lines.push(l);
        for (let w = this.#waiters.length - 1; w >= 0; w--) {
          if (this.#waiters[w]!.re.test(l)) this.#waiters.splice(w, 1)[0]!.resolve(l);
        }
      }
    }
  }

  waitLine(re: RegExp, timeoutMs = 30000): Promise<string> {
    const seen = this.lines.find((l) => re.test(l));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no ${re} within ${timeoutMs} ms`)), timeoutMs);
      this.#waiters.push({
        re,
        resolve: (l) => {
          clearTimeout(t);
          resolve(l);
        },
      });
    });
  }

  async kill(): Promise<void> {
    try {
      this.child.kill("SIGKILL");
    } catch { /* gone */ }
    await this.child.status;
    await this.#pump;
  }
}
