/**
 * The migration benchmark's VM handle: one VMM process (ferry or QEMU) with its serial console on
 * stdout (scanned line by line), the tail of its stderr kept for error messages, and a QMP
 * connection. Every handle is killed by its own pid in `close()`.
 * @module
 */
import { QmpClient } from "../src/client/qmp_client.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** The probe guest's progress line; group 1 is the count (pages written, in fill and dirty modes). */
const PROGRESS = /PROBE PROGRESS cpu=0 count=(\d+)/;
/** Lines a probe guest prints when its state did not survive. */
const BROKEN = /PROBE (BOOT|VERIFY FAIL|STATE FAIL|EXCEPTION)/;

/** A VMM process under the benchmark. */
export class BenchVm {
  readonly name: string;
  readonly child: Deno.ChildProcess;
  readonly lines: string[] = [];
  readonly qmpPath: string;
  #stderr: string[] = [];
  #pumps: Promise<void>[];
  #qmp: QmpClient | undefined;
  #exited = false;

  constructor(name: string, cmd: string, args: string[], qmpPath: string) {
    this.name = name;
    this.qmpPath = qmpPath;
    this.child = new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" }).spawn();
    this.#pumps = [this.#pump(this.child.stdout, this.lines), this.#pump(this.child.stderr, this.#stderr)];
    this.child.status.then(() => this.#exited = true);
  }

  async #pump(s: ReadableStream<Uint8Array>, into: string[]): Promise<void> {
    const dec = new TextDecoder();
    let buf = "";
    try {
      for await (const c of s) {
        buf += dec.decode(c, { stream: true });
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          into.push(buf.slice(0, i).replace(/\r$/, ""));
          buf = buf.slice(i + 1);
          if (into === this.#stderr && into.length > 200) into.splice(0, into.length - 200);
        }
      }
    } catch { /* killed */ }
    if (buf) into.push(buf);
  }

  /** True once the process has exited. */
  get exited(): boolean {
    return this.#exited;
  }

  /** The last stderr lines, for error messages. */
  stderrTail(n = 6): string {
    return this.#stderr.slice(-n).join(" | ");
  }

  /** Connects QMP once (retries until the socket appears) and returns the client. */
  async qmp(timeoutMs = 15000): Promise<QmpClient> {
    if (!this.#qmp) {
      const q = await QmpClient.connect(this.qmpPath, timeoutMs);
      this.#qmp = q;
      await q.call("qmp_capabilities"); // QEMU refuses everything else before it; ferry accepts it
    }
    return this.#qmp;
  }

  /**
   * Waits for a stdout line matching `re` at index `from` or later; fails at the timeout or when
   * the process exits first, naming this VM and quoting its stderr.
   */
  async waitLine(re: RegExp, timeoutMs: number, from = 0): Promise<{ m: RegExpMatchArray; index: number }> {
    const deadline = performance.now() + timeoutMs;
    let i = from;
    for (;;) {
      for (; i < this.lines.length; i++) {
        const m = this.lines[i]!.match(re);
        if (m) return { m, index: i };
      }
      if (this.#exited) {
        throw new Error(`${this.name} exited before printing ${re}: ${this.stderrTail()}`);
      }
      if (performance.now() > deadline) {
        throw new Error(
          `${this.name} printed no ${re} within ${timeoutMs} ms (last: '${this.lines.at(-1) ?? ""}')`,
        );
      }
      await sleep(20);
    }
  }

  /** Waits until the guest's progress count reaches `count` (e.g. every page of its area written once). */
  async waitProgress(count: number, timeoutMs: number): Promise<void> {
    for (let from = 0;;) {
      const { m, index } = await this.waitLine(PROGRESS, timeoutMs, from);
      if (Number(m[1]) >= count) return;
      from = index + 1;
    }
  }

  /**
   * Waits for the guest to make progress after this point (a migrated or restored guest runs on),
   * then fails if it ever printed that its state broke, naming `what`.
   */
  async assertGuestContinues(what: string): Promise<void> {
    await this.waitLine(PROGRESS, 30000, this.lines.length);
    const bad = this.lines.find((l) => BROKEN.test(l));
    if (bad) throw new Error(`${what} printed '${bad}'`);
  }

  /** Closes QMP and kills the process (SIGKILL, by its pid); never throws. */
  async close(): Promise<void> {
    // With BENCH_CPU_PROF, quit through QMP so that Deno writes the CPU profile on exit.
    if (this.#qmp && Deno.env.get("BENCH_CPU_PROF") && !this.#exited) {
      await this.#qmp.execute("quit").catch(() => {});
      await Promise.race([this.child.status, new Promise((r) => setTimeout(r, 5000))]);
    }
    if (this.#qmp) await this.#qmp.close().catch(() => {});
    if (!this.#exited) {
      try {
        this.child.kill("SIGKILL");
      } catch { /* already gone */ }
    }
    await this.child.status.catch(() => {});
    await Promise.all(this.#pumps);
  }
}

/** A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}
