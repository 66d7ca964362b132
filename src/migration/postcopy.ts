/**
 * Post-copy pieces both sides share: the error that ends in `postcopy-paused`, pausing a guest
 * whose memory is split, and the `query-migrate` fields (QEMU's names).
 * @module
 */
import { logger } from "../util/log.ts";
import type { MigrationVm } from "./vm_port.ts";
import type { MigrationInfo } from "./stats.ts";
import type { MigrationCapabilities } from "./parameters.ts";
import type { PostcopyStats } from "./postcopy_destination.ts";

const log = logger("migration:postcopy");

/** How long pausing a guest with vCPUs blocked on missing pages may take before giving up. */
const PAUSE_TIMEOUT_MS = 2000;

/**
 * Post-copy broke after the switch: neither side holds the whole guest. The status becomes
 * `postcopy-paused` (not `failed`: the guest is not lost as long as both processes live) and the
 * process keeps running so that the operator sees why.
 */
export class PostcopyPausedError extends Error {
  override name = "PostcopyPausedError";
}

/**
 * Pauses the vCPUs of a guest whose missing pages will not come. A vCPU blocked inside the kernel
 * on such a page may not answer the kick; it stays blocked then, which is just as safe (it cannot
 * run on without its page), so the pause gives up after {@linkcode PAUSE_TIMEOUT_MS}.
 */
export async function pausePostcopyGuest(vm: MigrationVm): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const paused = await Promise.race([
    vm.pause().then(() => true, (e: Error) => {
      log.error("Cannot pause the guest after the post-copy failure: %s", e.message);
      return false;
    }),
    new Promise<boolean>((r) => (timer = setTimeout(() => r(false), PAUSE_TIMEOUT_MS))),
  ]);
  clearTimeout(timer);
  if (!paused) log.warn("Post-copy: some vCPUs stay blocked on missing pages instead of pausing");
}

/** The destination's post-copy fields of `query-migrate`. */
export function postcopyInfo(
  s: PostcopyStats,
  capabilities: Readonly<MigrationCapabilities>,
): Partial<MigrationInfo> {
  const info: Partial<MigrationInfo> = {};
  if (s.remoteFaults > 0) info["postcopy-latency"] = Math.round(s.latencySumNs / s.remoteFaults);
  if (capabilities["postcopy-blocktime"]) {
    info["postcopy-blocktime"] = Math.round(s.allBlockedMs);
    info["postcopy-vcpu-blocktime"] = s.vcpuBlockMs.map((ms) => Math.round(ms));
  }
  return info;
}
