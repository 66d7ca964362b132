/**
 * Reading a probe guest's serial console written to a file (`serial: {kind: "file"}`), for tests
 * that drive a `Vm` in-process instead of a ferry process.
 * @module
 */

/** The complete lines of the serial file: the guest writes it byte by byte, so a last line without
 * its newline is still being written (a half-written `count=` would read as a smaller number). */
export function serialLines(path: string): string[] {
  try {
    const all = Deno.readTextFileSync(path).split("\n");
    all.pop();
    return all;
  } catch {
    return [];
  }
}

/** Waits until a complete line of the serial file matches `re`; returns the match. */
export async function waitForSerial(path: string, re: RegExp, timeoutMs = 20000): Promise<RegExpMatchArray> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    for (const l of serialLines(path)) {
      const m = l.match(re);
      if (m) return m;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`No ${re} in ${path}:\n${serialLines(path).slice(-15).join("\n")}`);
}
