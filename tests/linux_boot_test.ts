/**
 * Linux boots under ferry when a kernel that runs on this host's KVM is given. Stock kernels do
 * not run under the paravirtual KVM ("PVM") of the machines this project is built on
 * (DESIGN.md §1), so the test takes the kernel from `FERRY_LINUX_KERNEL` (ELF vmlinux or
 * bzImage; optional `FERRY_LINUX_INITRD`) and is skipped with the reason when none is given.
 */
import assert from "node:assert/strict";
import { Ferry } from "./_fixture/ferry.ts";

const kernel = Deno.env.get("FERRY_LINUX_KERNEL");
const initrd = Deno.env.get("FERRY_LINUX_INITRD");

for (const smp of [1, 2]) {
  Deno.test({
    name: kernel
      ? `Linux ${kernel} boots to its console with -smp ${smp} and sees ${smp} CPU(s)`
      : `Linux boots with -smp ${smp} (skipped: set FERRY_LINUX_KERNEL to a kernel that runs on this host's KVM)`,
    ignore: !kernel,
    fn: async () => {
      const args = [
        "-machine",
        "q35",
        "-m",
        "512M",
        "-smp",
        String(smp),
        "-kernel",
        kernel!,
        "-serial",
        "stdio",
      ];
      args.push("-append", "console=ttyS0 earlyprintk=serial panic=-1 reboot=t");
      if (initrd) args.push("-initrd", initrd);
      const f = new Ferry(args);
      try {
        await f.waitLine(/Linux version/, 60000);
        const m = await f.waitLine(
          /(smpboot: Total of (\d+) processors activated|Brought up \d+ node, (\d+) CPU)/,
          120000,
        );
        assert.equal(Number(m[2] ?? m[3]), smp);
      } finally {
        await f.kill();
      }
    },
  });
}

Deno.test({
  name: kernel
    ? `Linux ${kernel} sees the virtio disk as /dev/vda`
    : "Linux sees the virtio disk as /dev/vda (skipped: set FERRY_LINUX_KERNEL to a kernel that runs on this host's KVM)",
  ignore: !kernel,
  fn: async () => {
    const dir = Deno.makeTempDirSync({ prefix: "ferry-linux-" });
    const img = `${dir}/disk.img`;
    Deno.writeFileSync(img, new Uint8Array(0));
    Deno.truncateSync(img, 64 << 20);
    const args = ["-machine", "q35", "-m", "512M", "-smp", "1", "-kernel", kernel!, "-serial", "stdio"];
    args.push("-append", "console=ttyS0 root=/dev/vda panic=-1 reboot=t");
    args.push("-drive", `file=${img},id=rootfs,readonly=off,direct=off`);
    args.push("-device", "virtio-blk-pci,drive=rootfs,id=rootfs,bus=pcie.0,addr=0x2");
    if (initrd) args.push("-initrd", initrd);
    const f = new Ferry(args);
    try {
      await f.waitLine(/virtio_blk virtio\d+: \[vda\] 131072 512-byte logical blocks/, 120000);
    } finally {
      await f.kill();
      Deno.removeSync(dir, { recursive: true });
    }
  },
});
