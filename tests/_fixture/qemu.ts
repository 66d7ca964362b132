/**
 * Boots the probe guest under QEMU (Debian's qemu-system-x86_64) for tests that pin the guest
 * apart from ferry.
 * @module
 */
import { exists, onPath, PROBE } from "./ferry.ts";

const QBOOT = "/usr/share/qemu/qboot.rom";

/** The QEMU binary, or undefined when it is not installed. */
export const QEMU = onPath("qemu-system-x86_64");

/** Why the QEMU tests cannot run here, or undefined when they can. */
export const qemuSkipReason = QEMU === undefined
  ? "qemu-system-x86_64 is not installed"
  : !exists(PROBE)
  ? "zig-out/guest/probe.elf is not built (run zig build)"
  : !exists("/dev/kvm")
  ? "/dev/kvm is missing"
  : undefined;

/** One QEMU run of the probe guest. */
export interface QemuRun {
  code: number;
  /** The guest's `PROBE ...` lines (firmware text before them on a line is cut). */
  lines: string[];
  transcript: string;
}

/**
 * Boots the probe under QEMU until it exits (the guest's `exit=`) and collects its `PROBE` lines.
 * @param opts.netns run QEMU inside this network namespace (`ip netns exec`)
 */
export async function bootProbeInQemu(opts: {
  append: string;
  smp?: number;
  extra?: string[];
  netns?: string;
  timeoutMs?: number;
}): Promise<QemuRun> {
  const qemu = [
    QEMU!,
    "-machine",
    "q35,accel=kvm",
    // -cpu host alone makes this QEMU (7.2) abort setting MSR 0x10a on the PVM host.
    "-cpu",
    "host,-arch-capabilities",
    "-m",
    "256",
    "-smp",
    String(opts.smp ?? 1),
    "-nodefaults",
    "-nographic",
    "-serial",
    "stdio",
    "-no-reboot",
    // qboot reaches the kernel in ~0.1 s; SeaBIOS takes ~4 s here (its real-mode code is emulated).
    ...(exists(QBOOT) ? ["-bios", QBOOT] : []),
    "-kernel",
    PROBE,
    "-append",
    opts.append,
    ...(opts.extra ?? []),
  ];
  const [cmd, ...args] = opts.netns === undefined ? qemu : ["ip", "netns", "exec", opts.netns, ...qemu];
  const out = await new Deno.Command(cmd!, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(opts.timeoutMs ?? 20000),
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const lines = text.split("\n").flatMap((l) => {
    const i = l.indexOf("PROBE ");
    return i < 0 ? [] : [l.slice(i).replace(/\r$/, "")];
  });
  const transcript = `${text}\n--- stderr ---\n${new TextDecoder().decode(out.stderr)}`;
  return { code: out.code, lines, transcript };
}
