/**
 * Helpers of the I/O benchmark (io.ts): a child process whose stdout lines are kept with the host
 * time they arrived (a VMM's serial console, the RX blaster), the network namespace with one tap
 * that the net runs use, and the RX blaster (python3 with a packet socket inside the namespace).
 * Every process is killed by its own pid; the namespace is deleted by name.
 * @module
 */

/** One stdout line and when (performance.now(), ms) it arrived. */
export interface TimedLine {
  t: number;
  text: string;
  /**
   * Host CPU seconds the process had used outside its guest when the line arrived (only for lines
   * matching the process's `cpuAt` pattern): see {@linkcode hostCpuSeconds}.
   */
  cpu?: number;
}

/** Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on Linux). */
const USER_HZ = 100;

/** The fields of a /proc stat line after the command name: index 0 is field 3 (state). */
function statFields(line: string): string[] {
  return line.slice(line.lastIndexOf(")") + 2).split(" ");
}

/**
 * Clock ticks a process spent outside its vCPU threads, from `/proc/PID/stat` (`proc`) and the
 * `/proc/PID/task/TID/stat` of each live thread (`tasks`): utime + stime of the process (exited
 * threads included) minus utime + stime of every thread with guest_time > 0 (a vCPU thread).
 */
export function nonVcpuTicks(proc: string, tasks: string[]): number {
  const p = statFields(proc);
  let ticks = Number(p[11]) + Number(p[12]);
  for (const t of tasks) {
    const f = statFields(t);
    if (Number(f[40]) > 0) ticks -= Number(f[11]) + Number(f[12]);
  }
  return ticks;
}

/**
 * CPU seconds process `pid` spent on the host in its threads other than its vCPU threads: the
 * I/O path of both VMMs (ferry's I/O Worker, QEMU's main loop, either's io_uring workers), the
 * exit handling that runs outside a vCPU thread (ferry's vCPU Worker), timers, the JIT
 * ({@linkcode nonVcpuTicks}). A vCPU thread is left out whole, for both VMMs: its own host
 * time cannot be told from its guest time on this host, where guest_time is tick-sampled while
 * utime and stime are scaled to the exact run time (a QEMU vCPU thread showed 1.79 s of
 * guest_time in 3 s while it ran 1.52 s in all, so utime + stime − guest_time went negative).
 * NaN when unreadable.
 */
export function hostCpuSeconds(pid: number): number {
  try {
    const proc = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const tasks: string[] = [];
    for (const e of Deno.readDirSync(`/proc/${pid}/task`)) {
      try {
        tasks.push(Deno.readTextFileSync(`/proc/${pid}/task/${e.name}/stat`));
      } catch { /* the thread exited: its time is in the process's */ }
    }
    return nonVcpuTicks(proc, tasks) / USER_HZ;
  } catch {
    return NaN;
  }
}

/** A child process scanned line by line; see the module doc. */
export class TimedProcess {
  readonly child: Deno.ChildProcess;
  readonly lines: TimedLine[] = [];
  #stderr: string[] = [];
  #wake: Array<() => void> = [];
  #ended = false;
  readonly #pumps: Promise<void>[];

  /**
   * @param cpuAt lines matching it get {@linkcode TimedLine.cpu} (the process must be the VMM
   *   itself: `ip netns exec` execs it in place)
   */
  constructor(cmd: string, args: string[], cpuAt?: RegExp) {
    this.child = new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" }).spawn();
    const pid = this.child.pid;
    const push = (text: string) => {
      const l: TimedLine = { t: performance.now(), text };
      if (cpuAt?.test(text)) l.cpu = hostCpuSeconds(pid);
      this.lines.push(l);
    };
    this.#pumps = [
      this.#pump(this.child.stdout, push).then(() => {
        this.#ended = true;
        this.#notify();
      }),
      this.#pump(this.child.stderr, (text) => {
        this.#stderr.push(text);
        if (this.#stderr.length > 100) this.#stderr.shift();
      }),
    ];
  }

  async #pump(s: ReadableStream<Uint8Array>, push: (l: string) => void): Promise<void> {
    const dec = new TextDecoder();
    let buf = "";
    try {
      for await (const c of s) {
        buf += dec.decode(c, { stream: true });
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          push(buf.slice(0, i).replace(/\r$/, ""));
          buf = buf.slice(i + 1);
          this.#notify();
        }
      }
    } catch { /* killed */ }
    if (buf) push(buf);
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = [];
    for (const f of w) f();
  }

  /**
   * The first line at index ≥ `from` matching `re`, with its index.
   * @throws {Error} after `timeoutMs`, or when stdout ends first
   */
  async waitFor(re: RegExp, timeoutMs: number, from = 0): Promise<{ index: number; line: TimedLine }> {
    const deadline = performance.now() + timeoutMs;
    let i = from;
    for (;;) {
      for (; i < this.lines.length; i++) {
        if (re.test(this.lines[i]!.text)) return { index: i, line: this.lines[i]! };
      }
      if (this.#ended) throw new Error(`exited before printing ${re}: ${this.transcript()}`);
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`no ${re} within ${timeoutMs} ms: ${this.transcript()}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#wake.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** The last stdout lines and stderr lines, for error messages. */
  transcript(n = 6): string {
    const out = this.lines.slice(-n).map((l) => l.text).join(" | ");
    return `stdout: ${out || "(none)"}; stderr: ${this.#stderr.slice(-n).join(" | ") || "(none)"}`;
  }

  /** Kills the process (SIGKILL to its pid) if it still runs, and waits for it and its pipes. */
  async kill(): Promise<void> {
    try {
      this.child.kill("SIGKILL");
    } catch { /* already gone */ }
    await this.child.status;
    await Promise.all(this.#pumps);
  }
}

async function ip(...args: string[]): Promise<{ ok: boolean; out: string }> {
  const r = await new Deno.Command("ip", { args, stdin: "null", stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { ok: r.success, out: (dec.decode(r.stdout) + dec.decode(r.stderr)).trim() };
}

/** A network namespace holding one persistent, up tap (no address, IPv6 off: no host chatter). */
export interface IoNetns {
  ns: string;
  tap: string;
  /** Deletes the namespace (and the tap with it). */
  remove(): Promise<void>;
}

/**
 * Creates {@linkcode IoNetns} named after this process, or returns why it cannot (one line).
 */
export async function createIoNetns(): Promise<IoNetns | string> {
  try {
    Deno.statSync("/dev/net/tun");
  } catch {
    return "/dev/net/tun is missing";
  }
  const tag = `${Deno.pid % 1000000}`;
  const ns = `ferry-iob${tag}`, tap = `iob${tag}t0`;
  const remove = async () => {
    await ip("netns", "del", ns);
  };
  const steps = [
    ["netns", "add", ns],
    ["-n", ns, "link", "set", "lo", "up"],
    ["netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
    ["-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"],
    ["-n", ns, "link", "set", tap, "up"],
  ];
  for (const s of steps) {
    let r;
    try {
      r = await ip(...s);
    } catch {
      return "the ip command is not installed";
    }
    if (!r.ok) {
      if (s[0] !== "netns" || s[1] !== "add") await remove();
      return `'ip ${s.join(" ")}' failed: ${r.out.split("\n")[0]}`;
    }
  }
  return { ns, tap, remove };
}

/** Deletes namespace `ns` synchronously (for a SIGINT handler). */
export function removeNetnsSync(ns: string): void {
  try {
    new Deno.Command("ip", { args: ["netns", "del", ns], stdout: "null", stderr: "null" }).outputSync();
  } catch { /* best effort */ }
}

/**
 * The RX blaster: a packet socket on the tap (inside the namespace) sending one 60-byte UDP frame
 * (10.0.2.2:9999 → 10.0.2.15:9, the discard port: the probe only counts it) to the guest's MAC as
 * fast as Python can, for `secs` seconds. Writing into the tap's host side puts the frame in the
 * tap's queue for the VMM to read; a full queue refuses it (ENOBUFS, counted as `refused`). Prints
 * `BLAST start` then `BLAST sent=<n> refused=<n> secs=<s>`.
 */
const BLASTER = `
import socket, struct, sys, time
ifname, dst, secs = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), float(sys.argv[3])
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, 0, 0, 64, 17, 0, bytes([10, 0, 2, 2]), bytes([10, 0, 2, 15]))
frame = dst + bytes.fromhex("02aabbccddee") + b"\\x08\\x00" + ip + struct.pack("!HHHH", 9999, 9, 26, 0) + b"B" * 18
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
try:
    s.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS: straight into the tap's queue
except OSError:
    pass
s.bind((ifname, 0))
send, sent, refused = s.send, 0, 0
print("BLAST start", flush=True)
t0 = time.time()
end = t0 + secs
while True:
    for _ in range(256):
        try:
            send(frame)
            sent += 1
        except OSError:
            refused += 1
    if time.time() >= end:
        break
print("BLAST sent=%d refused=%d secs=%.3f" % (sent, refused, time.time() - t0), flush=True)
`;

/** Whether python3 with AF_PACKET is there to blast; the reason when not. */
export async function blasterSkipReason(): Promise<string | undefined> {
  try {
    const r = await new Deno.Command("python3", {
      args: ["-c", "import socket; socket.AF_PACKET"],
      stdout: "null",
      stderr: "null",
    }).output();
    return r.success ? undefined : "python3 has no AF_PACKET sockets";
  } catch {
    return "python3 is not installed";
  }
}

/** Starts the blaster in `net` towards `mac` for `secs` seconds. */
export function startBlaster(net: IoNetns, mac: string, secs: number): TimedProcess {
  return new TimedProcess("ip", [
    "netns",
    "exec",
    net.ns,
    "python3",
    "-u",
    "-c",
    BLASTER,
    net.tap,
    mac,
    String(secs),
  ]);
}
