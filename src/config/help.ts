/**
 * {@linkcode helpText}: `ferry -help`, built from the same option table the parser uses.
 * @module
 */
import type { OptionInfo } from "./_kv.ts";
import { OPTIONS } from "./parse_args.ts";

function usage(o: OptionInfo): string {
  const names = [o.name, ...(o.aliases ?? [])].join(", ");
  return o.form ? `${names} ${o.form}` : names;
}

function section(title: string, options: readonly OptionInfo[]): string[] {
  const lines = [title];
  for (const o of options) {
    lines.push(`  ${usage(o)}`);
    lines.push(`      ${o.help}`);
  }
  return lines;
}

/**
 * The text `ferry -help` prints: every option with its form and default, then those refused as
 * not supported yet and those accepted and ignored.
 * @returns text ending with a newline
 */
export function helpText(): string {
  const lines = [
    "ferry: a KVM virtual machine monitor (x86_64 q35) with StratoVirt's command line",
    "",
    "Usage: ferry -kernel PATH [OPTION VALUE]...",
    "  Options take one dash. Values are KEY=VALUE lists separated by commas; write ,, for a comma",
    "  inside a value. Paths are used as given.",
    "",
    ...section("Options:", OPTIONS.filter((o) => o.status === "supported")),
    "",
    ...section(
      "Recognised but not supported yet (refused):",
      OPTIONS.filter((o) => o.status === "unsupported"),
    ),
    "",
    ...section("Accepted and ignored:", OPTIONS.filter((o) => o.status === "ignored")),
    "",
    "Example:",
    '  ferry -machine q35 -kernel vmlinux.bin -append "console=ttyS0 root=/dev/vda" -m 2G -smp 2 \\',
    "    -drive file=rootfs.img,id=rootfs,readonly=off,direct=off \\",
    "    -device virtio-blk-pci,drive=rootfs,id=rootfs,bus=pcie.0,addr=0x2 \\",
    "    -netdev tap,id=net0,ifname=tap0 \\",
    "    -device virtio-net-pci,netdev=net0,id=net0,mac=52:54:00:12:34:56,bus=pcie.0,addr=0x3 \\",
    "    -qmp unix:/run/src.sock,server,nowait -serial stdio",
    "  A migration destination runs the same command with its own -qmp socket and",
    "  -incoming tcp:HOST:PORT or -incoming unix:PATH; a snapshot saved by QMP",
    "  migrate file:PATH starts again with the same command and -incoming file:PATH.",
  ];
  return lines.join("\n") + "\n";
}
