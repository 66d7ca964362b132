/**
 * The RSS floor `deno run` puts under ferry, with none of ferry's code: an empty script plus only what
 * ferry cannot run without (one Worker, the shim opened with one synchronous FFI symbol called, a
 * pending stdin read, a signal listener, an `Atomics.waitAsync`). `deno task bench boot` measures it
 * beside ferry and QEMU, so the RSS rows show how much of ferry's ratio is the runtime's.
 * Prints `PROBE READY` and then `PROBE PROGRESS` lines, like the probe guest, and runs until killed.
 * @module
 */
const SHIM = new URL("../zig-out/lib/libferry_shim.so", import.meta.url).pathname;

if (import.meta.main) {
  const lib = Deno.dlopen(SHIM, { ferry_getpid: { parameters: [], result: "isize" } });
  lib.symbols.ferry_getpid();
  const worker = new Worker(URL.createObjectURL(new Blob(["self.onmessage = () => {};"])), {
    type: "module",
  });
  worker.postMessage(0);
  Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
  void Deno.stdin.read(new Uint8Array(1)).catch(() => {});
  const words = new Int32Array(new SharedArrayBuffer(4));
  void Atomics.waitAsync(words, 0, 0).value;
  const say = (s: string) => Deno.stdout.writeSync(new TextEncoder().encode(s + "\n"));
  say("PROBE READY");
  setInterval(() => say("PROBE PROGRESS cpu=0"), 200);
}
