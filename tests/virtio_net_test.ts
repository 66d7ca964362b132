/**
 * Black box: ferry's virtio-net-pci on a tap in a network namespace this test creates, with the probe
 * guest's polled driver (`mode=net`). The host side (python3 in the namespace) sees the guest's
 * broadcasts from the guest's MAC and gets its UDP datagrams to port 7778 echoed back.
 * Skipped (with the reason) without /dev/net/tun, `ip netns` or python3.
 */
import assert from "node:assert/strict";
import { kvmSkipReason } from "./_fixture/ferry.ts";
import { assertNoStackTrace, sh, startVm, stopVm, tempDir, type Vm } from "./_fixture/migration.ts";
import {
  assertClean,
  createNetLab,
  GUEST_IP,
  GUEST_MAC,
  HostSide,
  netArgs,
  netSkipReason,
  waitPoweroff,
} from "./_fixture/virtio.ts";

const skip = kvmSkipReason() ?? await netSkipReason();
const suffix = skip === undefined ? "" : ` (skipped: ${skip})`;

Deno.test({
  name:
    `virtio-net on a tap in a network namespace: the host sees the guest's broadcasts from its MAC, gets its UDP pings echoed, and the guest counts them${suffix}`,
  ignore: skip !== undefined,
  async fn() {
    const lab = await createNetLab(1);
    const dir = tempDir();
    const host = new HostSide(lab, 15);
    let vm: Vm | undefined;
    try {
      await host.waitFor((e) => e.kind === "ready", 5000);
      const hostMac =
        (await sh("ip", "netns", "exec", lab.ns, "cat", `/sys/class/net/${lab.taps[0]}/address`)).out.trim();
      const rounds = 20;
      vm = await startVm({
        dir,
        name: "net",
        mem: "128M",
        append: `mode=net rounds=${rounds} interval_ms=100 cpus=1 exit=poweroff`,
        extra: netArgs(lab.taps[0]!),
        netns: lab.ns,
      });
      const f = vm.ferry;
      // Three echoes and three broadcasts, then the guest powers off after its 20 intervals.
      await host.waitFor((e) => e.kind === "echo", 10000);
      const st = await waitPoweroff(f, 15000);
      await host.stop();
      const t = `${f.transcript()}\n${host.transcript()}`;
      assert.equal(st.code, 0, t);
      assertClean(f, "guest");
      assertNoStackTrace(f);
      assert.match(
        f.lines.find((l) => l.startsWith("PROBE VIRTIO "))!,
        /^PROBE VIRTIO dev=00:03\.0 id=1af4:1041 /,
        t,
      );
      assert.ok(f.lines.includes(`PROBE NET READY mac=${GUEST_MAC} ip=${GUEST_IP}`), t);

      const bcast = host.events.filter((e) => e.kind === "bcast");
      assert.ok(bcast.length >= rounds - 2, `the host saw the guest's broadcasts\n${t}`);
      assert.ok(bcast.every((e) => e.dst === "ff:ff:ff:ff:ff:ff"), t);
      const seqs = bcast.map((e) => e.seq!);
      assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), "in order");
      assert.equal(seqs.at(-1), rounds, t);

      const echoes = host.events.filter((e) => e.kind === "echo");
      assert.ok(echoes.length >= 3, t);
      for (const e of echoes) {
        assert.match(e.payload!, /^ping \d+$/);
        assert.deepEqual([e.from, e.port], [GUEST_IP, 7778]);
      }
      // The guest received the host's frames (ARP, UDP) and counted its echoes.
      assert.ok(
        f.lines.some((l) =>
          l.startsWith("PROBE NET RX len=") && l.endsWith(`from=${hostMac} ethertype=0x0800`)
        ),
        t,
      );
      const tx = f.lines.filter((l) => /^PROBE NET TX seq=\d+ rx=\d+ echo=\d+$/.test(l));
      assert.equal(tx.length, rounds, t);
      const last = tx.at(-1)!.match(/seq=(\d+) rx=(\d+) echo=(\d+)/)!;
      assert.equal(Number(last[1]), rounds, t);
      assert.ok(Number(last[3]) >= echoes.length, `the guest sent every echo the host got\n${t}`);
      assert.ok(Number(last[2]) >= Number(last[3]), t);
    } finally {
      await host.stop();
      await stopVm(vm);
      await lab.remove();
      Deno.removeSync(dir, { recursive: true });
    }
  },
});
