/**
 * Black box: the probe guest's polled virtio drivers (guest/blk.zig, guest/net.zig) against QEMU's own
 * virtio-blk-pci and virtio-net-pci (modern only), so the guest is pinned apart from ferry's devices.
 * Block: pattern rounds verify and the image on the host holds the last round; readonly=on refuses the
 * write with VIRTIO_BLK_S_IOERR and leaves the image alone. Net: a tap in a network namespace sees the
 * guest's broadcasts and gets its UDP datagrams echoed back.
 */
import assert from "node:assert/strict";
import { exists, onPath } from "./_fixture/ferry.ts";
import { bootProbeInQemu, type QemuRun, qemuSkipReason } from "./_fixture/qemu.ts";

const SECTOR = 512;
const MAGIC = 0x4b4c_4245_424f_5250n; // "PROBEBLK"
const M64 = (1n << 64n) - 1n;

function skipped(reason: string | undefined): string {
  return reason === undefined ? "" : ` (skipped: ${reason})`;
}

const skipReason = qemuSkipReason;

async function run(cmd: string, args: string[]): Promise<{ ok: boolean; out: string; err: string }> {
  try {
    const o = await new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" }).output();
    return {
      ok: o.success,
      out: new TextDecoder().decode(o.stdout),
      err: new TextDecoder().decode(o.stderr),
    };
  } catch (e) {
    return { ok: false, out: "", err: String(e) };
  }
}

/** Why the network test cannot run here, or undefined when it can (root, ip netns, /dev/net/tun, python3). */
async function netSkipReason(): Promise<string | undefined> {
  if (skipReason !== undefined) return skipReason;
  if (!exists("/dev/net/tun")) return "/dev/net/tun is missing";
  if (onPath("ip") === undefined) return "the ip command is not installed";
  if (onPath("python3") === undefined) return "python3 is not installed (the host side of the test)";
  const ns = `ferry-vprobe-${Deno.pid}`;
  const add = await run("ip", ["netns", "add", ns]);
  if (!add.ok) return `ip netns add fails: ${add.err.trim()}`;
  await run("ip", ["netns", "del", ns]);
  return undefined;
}
const netSkip = await netSkipReason();

function bootProbe(append: string, extra: string[], netns?: string): Promise<QemuRun> {
  return bootProbeInQemu({ append, extra, ...(netns !== undefined ? { netns } : {}) });
}

// ------------------------------------------------------------------ the sector pattern (guest/blk.zig)
function mix(v: bigint): bigint {
  let z = (v + 0x9e37_79b9_7f4a_7c15n) & M64;
  z = ((z ^ (z >> 30n)) * 0xbf58_476d_1ce4_e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d0_49bb_1331_11ebn) & M64;
  return z ^ (z >> 31n);
}

function checksum(words: bigint[]): bigint {
  let c = 0xcbf2_9ce4_8422_2325n;
  for (const w of words) c = ((c ^ w) * 0x100_0000_01b3n) & M64;
  return c;
}

/** The 512 bytes the guest writes to `sector` in `round`. */
function encodeSector(round: number, sector: number): Uint8Array {
  const out = new Uint8Array(SECTOR);
  const dv = new DataView(out.buffer);
  const w: bigint[] = [MAGIC, BigInt(round), BigInt(sector)];
  const f = mix((BigInt(round) << 40n) ^ BigInt(sector));
  for (let i = 3; i < 63; i++) w.push((f + 0x9e37_79b9_7f4a_7c15n * BigInt(i)) & M64);
  w.push(checksum(w));
  w.forEach((v, i) => dv.setBigUint64(i * 8, v, true));
  return out;
}

/** Decodes one sector: the round it holds, or a reason it is not a probe sector for `sector`. */
function decodeSector(bytes: Uint8Array, sector: number): { round: number } | { bad: string } {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, SECTOR);
  const w = Array.from({ length: 64 }, (_, i) => dv.getBigUint64(i * 8, true));
  if (w[0] !== MAGIC) return { bad: "magic" };
  if (w[63] !== checksum(w.slice(0, 63))) return { bad: "checksum" };
  if (w[2] !== BigInt(sector)) return { bad: `sector ${w[2]}` };
  const round = Number(w[1]);
  const fresh = encodeSector(round, sector);
  if (!fresh.every((b, i) => b === bytes[i])) return { bad: "fill" };
  return { round };
}

function linesMatching(run: QemuRun, re: RegExp): string[] {
  return run.lines.filter((l) => re.test(l));
}

function assertClean(run: QemuRun): void {
  assert.deepEqual(
    run.lines.filter((l) => /FAIL|EXCEPTION|TIMEOUT|ERROR/.test(l)),
    [],
    run.transcript,
  );
}

function withImage(mib: number, fn: (path: string) => Promise<void>): Promise<void> {
  const dir = Deno.makeTempDirSync({ prefix: "ferry-vprobe-" });
  const path = `${dir}/disk.img`;
  Deno.writeFileSync(path, new Uint8Array(0));
  Deno.truncateSync(path, mib << 20);
  return fn(path).finally(() => Deno.removeSync(dir, { recursive: true }));
}

Deno.test({
  name:
    `probe virtio-blk under QEMU writes, flushes and verifies its pattern, and the image holds the last round${
      skipped(skipReason)
    }`,
  ignore: skipReason !== undefined,
  fn: () =>
    withImage(8, async (img) => {
      const rounds = 3;
      const run = await bootProbe(`mode=blk blk_mib=4 rounds=${rounds} cpus=1 exit=poweroff`, [
        "-drive",
        `file=${img},if=none,id=d0,format=raw`,
        "-device",
        "virtio-blk-pci,drive=d0,disable-legacy=on,addr=0x2,serial=probe123",
      ]);
      const t = run.transcript;
      assert.equal(run.code, 0, t);
      assertClean(run);
      assert.deepEqual(linesMatching(run, /^PROBE BLK READY/), [
        "PROBE BLK READY capacity=16384 ro=0 serial=probe123",
      ], t);
      assert.match(
        run.lines.find((l) => l.startsWith("PROBE VIRTIO "))!,
        /^PROBE VIRTIO dev=00:02\.0 id=1af4:1042 /,
      );
      assert.deepEqual(
        linesMatching(run, /^PROBE BLK VERIFY/),
        Array.from({ length: rounds }, (_, i) => `PROBE BLK VERIFY ok round=${i + 1}`),
        t,
      );
      assert.equal(linesMatching(run, /^PROBE BLK RATE round=\d+ write_kibps=[1-9]/).length, rounds, t);
      const progress = linesMatching(run, /^PROBE PROGRESS cpu=0 count=\d+$/).map((l) =>
        Number(l.split("=").at(-1))
      );
      assert.equal(progress.at(-1), rounds * 8192, t);
      assert.equal(run.lines.at(-1), "PROBE EXIT poweroff", t);

      // The host's image holds round 3 in sectors 0..8191 and nothing after them.
      const image = Deno.readFileSync(img);
      for (const s of [0, 1, 127, 128, 4095, 8000, 8191]) {
        assert.deepEqual(
          decodeSector(image.subarray(s * SECTOR, (s + 1) * SECTOR), s),
          { round: rounds },
          `sector ${s}`,
        );
      }
      assert.ok(image.subarray(8192 * SECTOR).every((b) => b === 0), "sectors past blk_mib are untouched");
    }),
});

Deno.test({
  name:
    `probe virtio-blk under QEMU with readonly=on gets VIRTIO_BLK_S_IOERR for a write and verifies read-only${
      skipped(skipReason)
    }`,
  ignore: skipReason !== undefined,
  fn: () =>
    withImage(4, async (img) => {
      // Round 7's pattern over the first 2 MiB, zeros after: what a read-only guest must find.
      const image = new Uint8Array(4 << 20);
      for (let s = 0; s < 4096; s++) image.set(encodeSector(7, s), s * SECTOR);
      Deno.writeFileSync(img, image);
      const run = await bootProbe("mode=blk blk_mib=4 rounds=2 cpus=1 exit=poweroff", [
        "-drive",
        `file=${img},if=none,id=d0,format=raw,readonly=on`,
        "-device",
        "virtio-blk-pci,drive=d0,disable-legacy=on,addr=0x2",
      ]);
      const t = run.transcript;
      assert.equal(run.code, 0, t);
      assertClean(run);
      assert.ok(run.lines.includes("PROBE BLK READY capacity=8192 ro=1 serial=-"), t);
      assert.deepEqual(linesMatching(run, /^PROBE BLK WRITE/), ["PROBE BLK WRITE status=1"], t);
      const ro = linesMatching(run, /^PROBE BLK READONLY/);
      assert.equal(ro.length, 2, t);
      const sums = ro.map((l) =>
        /^PROBE BLK READONLY ok round=\d+ sum=(0x[0-9a-f]+) valid=4096$/.exec(l)?.[1]
      );
      assert.ok(sums[0] !== undefined && sums[0] === sums[1], t);
      assert.deepEqual(linesMatching(run, /^PROBE BLK VERIFY/), [], t);
      assert.equal(run.lines.at(-1), "PROBE EXIT poweroff", t);
      assert.deepEqual(Deno.readFileSync(img), image, "the read-only image is unchanged");
    }),
});

/** The host side, run inside the namespace: collects broadcasts (UDP 7777), pings UDP 7778, collects echoes. */
const HOST_SIDE = `
import json, socket, sys, time
guest = sys.argv[1]
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(("", 7777)); b.setblocking(False)
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(("", 7779)); r.setblocking(False)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("ready", flush=True)
bcast, echo, sent = [], [], 0
end = time.time() + float(sys.argv[2])
while time.time() < end and (len(echo) < 3 or len(bcast) < 3):
    for sock, out in ((b, bcast), (r, echo)):
        try:
            d, a = sock.recvfrom(2048)
            out.append([d.decode(errors="replace"), a[0], a[1]])
        except BlockingIOError:
            pass
    if bcast and sent < 3 and len(echo) == sent:
        sent += 1
        s.sendto(("ping %d" % sent).encode(), (guest, 7778))
    time.sleep(0.005)
print(json.dumps({"bcast": bcast, "echo": echo}), flush=True)
`;

Deno.test({
  name: `probe virtio-net under QEMU broadcasts to a tap in a network namespace and echoes UDP back${
    skipped(netSkip)
  }`,
  ignore: netSkip !== undefined,
  async fn() {
    const ns = `ferry-vprobe-${Deno.pid}`;
    const tap = `vptap${Deno.pid % 100000}`;
    const guestMac = "52:54:00:12:34:56";
    const sh = async (...args: string[]) => {
      const r = await run("ip", ["netns", "exec", ns, ...args]);
      assert.ok(r.ok, `${args.join(" ")}: ${r.err}`);
      return r.out.trim();
    };
    assert.ok((await run("ip", ["netns", "add", ns])).ok);
    try {
      await sh("ip", "tuntap", "add", "dev", tap, "mode", "tap");
      await sh("ip", "link", "set", tap, "up");
      await sh("ip", "addr", "add", "10.0.2.2/24", "dev", tap);
      const hostMac = await sh("cat", `/sys/class/net/${tap}/address`);
      const host = new Deno.Command("ip", {
        args: ["netns", "exec", ns, "python3", "-c", HOST_SIDE, "10.0.2.15", "8"],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const reader = host.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let hostOut = "";
      while (!hostOut.includes("ready\n")) {
        const { value, done } = await reader.read();
        if (done) break;
        hostOut += value;
      }
      const guest = await bootProbe("mode=net rounds=20 interval_ms=100 cpus=1 exit=poweroff", [
        "-netdev",
        `tap,id=n0,ifname=${tap},script=no,downscript=no`,
        "-device",
        `virtio-net-pci,netdev=n0,mac=${guestMac},disable-legacy=on,addr=0x3`,
      ], ns);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        hostOut += value;
      }
      const status = await host.status;
      const stderr = new TextDecoder().decode(
        (await host.stderr.getReader().read()).value ?? new Uint8Array(),
      );
      const t = `${guest.transcript}\n--- host side ---\n${hostOut}\n${stderr}`;
      assert.equal(guest.code, 0, t);
      assert.ok(status.success, t);
      assertClean(guest);
      assert.ok(guest.lines.includes(`PROBE NET READY mac=${guestMac} ip=10.0.2.15`), t);
      const seen = JSON.parse(hostOut.split("\n").filter((l) => l.startsWith("{")).at(-1)!) as {
        bcast: [string, string, number][];
        echo: [string, string, number][];
      };
      assert.ok(seen.bcast.length >= 3, t);
      for (const [payload, from, port] of seen.bcast) {
        assert.match(payload, /^PROBE [1-9]\d*$/);
        assert.deepEqual([from, port], ["10.0.2.15", 7777]);
      }
      assert.deepEqual(seen.echo, [1, 2, 3].map((i) => [`ping ${i}`, "10.0.2.15", 7778]), t);
      // The guest saw the host's frames (ARP request, UDP) and counted its echoes.
      assert.ok(
        guest.lines.some((l) =>
          l.startsWith(`PROBE NET RX len=`) && l.includes(`from=${hostMac} ethertype=0x0800`)
        ),
        t,
      );
      const tx = linesMatching(guest, /^PROBE NET TX seq=\d+ rx=\d+ echo=\d+$/);
      assert.equal(tx.length, 20, t);
      assert.match(tx.at(-1)!, /^PROBE NET TX seq=20 rx=\d+ echo=3$/, t);
      assert.equal(guest.lines.at(-1), "PROBE EXIT poweroff", t);
    } finally {
      await run("ip", ["netns", "exec", ns, "ip", "tuntap", "del", "dev", tap, "mode", "tap"]);
      await run("ip", ["netns", "del", ns]);
    }
  },
});
