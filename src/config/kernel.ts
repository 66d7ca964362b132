/**
 * `-kernel PATH`, `-append CMDLINE`, `-initrd PATH` (StratoVirt `boot_source.rs`). Like StratoVirt,
 * every `-append` value (and every bare word after one) is joined with a space, so both
 * `-append "console=ttyS0 quiet"` and `-append console=ttyS0 quiet` work. Paths are not checked
 * here; the VMM opens them.
 * @module
 */
import type { OptionInfo } from "./_kv.ts";
import type { KernelConfig } from "./machine_config.ts";

/** `-kernel`. */
export const KERNEL_OPTION: OptionInfo = {
  name: "-kernel",
  arity: "one",
  repeat: false,
  form: "PATH",
  help: "Linux kernel, ELF vmlinux or bzImage (required unless -incoming)",
  status: "supported",
};

/** `-append`. */
export const APPEND_OPTION: OptionInfo = {
  name: "-append",
  arity: "many",
  repeat: true,
  form: "CMDLINE",
  help: "kernel command line; several values are joined with spaces. Default empty",
  status: "supported",
};

/** `-initrd`. */
export const INITRD_OPTION: OptionInfo = {
  name: "-initrd",
  arity: "one",
  repeat: false,
  form: "PATH",
  help: "initial RAM disk loaded beside the kernel. Default none",
  status: "supported",
};

/** StratoVirt `MAX_PATH_LENGTH`. */
const MAX_PATH_BYTES = 4096;

function checkPath(option: string, path: string): string {
  if (path === "") throw new TypeError(`Missing value for ${option}: expected ${option} PATH`);
  if (new TextEncoder().encode(path).length > MAX_PATH_BYTES) {
    throw new RangeError(
      `Cannot use ${option} '${path.slice(0, 40)}...': path longer than ${MAX_PATH_BYTES} bytes`,
    );
  }
  return path;
}

/**
 * Builds the kernel part from the three options' values.
 * @param kernel the `-kernel` value
 * @param appends every `-append` value, in order
 * @param initrd the `-initrd` value
 * @throws {TypeError} for `-append` or `-initrd` without `-kernel`, or an empty path
 */
export function parseKernel(
  kernel: string | undefined,
  appends: readonly string[],
  initrd: string | undefined,
): KernelConfig | undefined {
  if (kernel === undefined) {
    if (appends.length > 0) throw new TypeError("Cannot use -append without -kernel: expected -kernel PATH");
    if (initrd !== undefined) {
      throw new TypeError("Cannot use -initrd without -kernel: expected -kernel PATH");
    }
    return undefined;
  }
  const config: KernelConfig = { path: checkPath("-kernel", kernel), cmdline: appends.join(" ") };
  if (initrd !== undefined) config.initrd = checkPath("-initrd", initrd);
  return config;
}
