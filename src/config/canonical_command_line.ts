/**
 * {@linkcode canonicalCommandLine}: one fixed spelling of a {@linkcode MachineConfig}, so two
 * command lines that mean the same thing give the same text (and digest). Parsing
 * {@linkcode canonicalArgs} gives back an equal config.
 * @module
 */
import { escapeValue } from "./_kv.ts";
import { formatPciAddr } from "./device.ts";
import type { MachineConfig } from "./machine_config.ts";
import { formatIncoming } from "./incoming.ts";
import { formatSize } from "./memory.ts";

function onOff(b: boolean): string {
  return b ? "on" : "off";
}

/**
 * The canonical argv: options in a fixed order (`-machine -m -smp -kernel -append -initrd -drive
 * -netdev -device -serial -qmp -incoming -name -D`), keys in a fixed order, defaults written out,
 * `-chardev`/`-mon` pairs as `-qmp`, memory as the shortest exact `G`/`M`/`K` size.
 */
export function canonicalArgs(config: MachineConfig): string[] {
  const args = [
    "-machine",
    `${config.machine.type},accel=${config.machine.accel}`,
    "-m",
    formatSize(config.memoryBytes),
    "-smp",
    String(config.cpus),
  ];
  if (config.kernel) {
    args.push("-kernel", config.kernel.path);
    if (config.kernel.cmdline !== "") args.push("-append", config.kernel.cmdline);
    if (config.kernel.initrd !== undefined) args.push("-initrd", config.kernel.initrd);
  }
  for (const d of config.drives) {
    let v = `id=${escapeValue(d.id)},file=${escapeValue(d.file)},readonly=${onOff(d.readonly)},direct=${
      onOff(d.direct)
    }`;
    if (d.serial !== undefined) v += `,serial=${escapeValue(d.serial)}`;
    args.push("-drive", v);
  }
  for (const n of config.netdevs) {
    let v = `${n.kind},id=${escapeValue(n.id)}`;
    if (n.ifname !== undefined) v += `,ifname=${escapeValue(n.ifname)}`;
    if (n.fd !== undefined) v += `,fd=${n.fd}`;
    args.push("-netdev", v);
  }
  for (const d of config.devices) {
    let v = `${d.driver},id=${escapeValue(d.id)}`;
    if (d.bus !== undefined) v += `,bus=${escapeValue(d.bus)}`;
    if (d.addr) v += `,addr=${formatPciAddr(d.addr)}`;
    for (const key of Object.keys(d.props).sort()) v += `,${key}=${escapeValue(d.props[key] as string)}`;
    args.push("-device", v);
  }
  const s = config.serial;
  args.push("-serial", s.kind === "file" ? `file,path=${escapeValue(s.path)}` : s.kind);
  for (const q of config.qmp) {
    args.push("-qmp", `unix:${escapeValue(q.path)},server${q.wait ? "" : ",nowait"}`);
  }
  if (config.incoming) args.push("-incoming", formatIncoming(config.incoming));
  if (config.name !== undefined) args.push("-name", escapeValue(config.name));
  if (config.logFile !== undefined) args.push("-D", config.logFile);
  return args;
}

const PLAIN = /^[A-Za-z0-9_./:=,@%+-]+$/;

function shellQuote(word: string): string {
  return PLAIN.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

/**
 * The canonical command line as one shell-quoted string, e.g. for a digest.
 * @returns e.g. `-machine q35,accel=kvm -m 2G -smp 2 -kernel vmlinux.bin -append 'console=ttyS0' ...`
 */
export function canonicalCommandLine(config: MachineConfig): string {
  return canonicalArgs(config).map(shellQuote).join(" ");
}
