/**
 * Private test helper: asserts a config error's class, that its message is one line, names the
 * option and matches a pattern.
 * @module
 */
import assert from "node:assert/strict";

/** A built-in error class the parser throws. */
export type ErrorClass = TypeErrorConstructor | RangeErrorConstructor | SyntaxErrorConstructor;

/**
 * Runs `fn`, expecting a one-line `kind` error whose message contains `option` and matches `pattern`.
 * @returns the message
 */
export function assertConfigError(
  fn: () => unknown,
  kind: ErrorClass,
  option: string,
  pattern?: RegExp | string,
): string {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught !== undefined, `expected a ${kind.name} naming ${option}, got no error`);
  assert.ok(caught instanceof kind, `expected ${kind.name}, got ${String(caught)}`);
  const message = (caught as Error).message;
  assert.ok(!message.includes("\n"), `message is not one line: ${message}`);
  assert.ok(message.includes(option), `message does not name '${option}': ${message}`);
  assert.ok(!message.endsWith("."), `message ends with a period: ${message}`);
  if (typeof pattern === "string") assert.equal(message, pattern);
  else if (pattern) assert.match(message, pattern);
  return message;
}

/** The example source command from the brief, word for word. */
export const SOURCE_ARGS = [
  "-machine",
  "q35",
  "-kernel",
  "vmlinux.bin",
  "-append",
  "console=ttyS0 root=/dev/vda",
  "-m",
  "2G",
  "-smp",
  "2",
  "-drive",
  "file=rootfs.img,id=rootfs,readonly=off,direct=off",
  "-device",
  "virtio-blk-pci,drive=rootfs,id=rootfs,bus=pcie.0,addr=0x2",
  "-netdev",
  "tap,id=net0,ifname=tap0",
  "-device",
  "virtio-net-pci,netdev=net0,id=net0,mac=52:54:00:12:34:56,bus=pcie.0,addr=0x3",
  "-qmp",
  "unix:/run/src.sock,server,nowait",
  "-serial",
  "stdio",
];
