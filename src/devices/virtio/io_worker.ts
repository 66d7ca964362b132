/**
 * Worker entry of the I/O Worker: receives {@linkcode IoInit}, answers `ready`, then runs the
 * {@linkcode IoLoop} until told to stop (see io_control.ts). No top-level await, so no message is
 * lost before the handler is set (DESIGN.md §2).
 * @module
 */
/// <reference lib="deno.worker" />
import { threadId } from "../../sys/fd.ts";
import { IO_ST_EXITED, IO_W_STATE, type IoInit, type IoMessage } from "./io_control.ts";
import { IoLoop } from "./io_loop.ts";

function post(m: IoMessage): void {
  self.postMessage(m);
}

self.onmessage = (e: MessageEvent<IoInit>) => {
  const init = e.data;
  if (init.type !== "init") return;
  let loop: IoLoop;
  try {
    loop = new IoLoop({ plan: init.plan, control: init.control, controlFd: init.controlFd });
  } catch (err) {
    post({
      type: "error",
      detail: `Cannot build the I/O devices: ${err instanceof Error ? err.message : String(err)}`,
    });
    return;
  }
  post({ type: "ready", tid: threadId() });
  try {
    loop.run();
  } catch (err) {
    post({
      type: "error",
      detail: `I/O Worker stopped: ${err instanceof Error ? err.message : String(err)}`,
    });
    const w = new Int32Array(init.control);
    Atomics.store(w, IO_W_STATE, IO_ST_EXITED);
    Atomics.notify(w, IO_W_STATE);
  }
  self.close();
};
