import assert from "node:assert/strict";
import { assertMigratable } from "../../_testing.ts";
import { fakeMemory, TestDriver, testPlan, testTransport } from "../_testing.ts";
import {
  ETH_P_RARP,
  formatMac,
  NET_CFG_STATUS,
  NET_CTRL,
  NET_RX,
  NET_TX,
  NetHandler,
  parseMac,
  rarpFrame,
  VIRTIO_NET_CTRL_ANNOUNCE,
  VIRTIO_NET_CTRL_ANNOUNCE_ACK,
  VIRTIO_NET_CTRL_MAC,
  VIRTIO_NET_CTRL_MAC_ADDR_SET,
  VIRTIO_NET_OK,
  VIRTIO_NET_S_ANNOUNCE,
  VIRTIO_NET_S_LINK_UP,
  VirtioNet,
} from "./net.ts";
import { Tap, VNET_HDR_BYTES } from "../../../sys/tap.ts";
import { tapUring } from "./tap_uring.ts";
import { STATUS_NEEDS_RESET, type VirtioPciTransport } from "../pci_transport.ts";

const MAC = parseMac("52:54:00:12:34:56", "test");

function canTap(): string | undefined {
  try {
    Deno.statSync("/dev/net/tun");
  } catch {
    return "no /dev/net/tun";
  }
  if (Deno.uid() !== 0) return "not root (tap and netns need CAP_NET_ADMIN)";
  return undefined;
}
const skipTap = canTap();

function sh(...args: string[]): { ok: boolean; err: string } {
  const out = new Deno.Command(args[0]!, { args: args.slice(1), stdout: "null", stderr: "piped" })
    .outputSync();
  return { ok: out.success, err: new TextDecoder().decode(out.stderr) };
}

/** A net device over a real tap moved into a fresh network namespace. */
function rig(tag: string, options: { batchRx?: boolean; batchTx?: boolean } = {}) {
  const ns = `ferry-t${Deno.pid}-${tag}`;
  const ifname = `fy${Deno.pid % 100000}${tag}`;
  const add = sh("ip", "netns", "add", ns);
  if (!add.ok) throw new Error(`Cannot create netns '${ns}': ${add.err}`);
  // No IPv6 on the tap: the host's own router/neighbour solicitations would take RX chains.
  sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1");
  const tap = new Tap(ifname, "net0");
  const net = new VirtioNet({ config: { id: "net0", ifname, mac: MAC }, tap });
  const memory = fakeMemory(8 << 20);
  const t = testTransport({ plan: { ...testPlan(net.info), deviceId: net.id }, memory, fire: () => {} });
  net.attach(t);
  const handler = new NetHandler({ plan: net.backendPlan(), memory, transport: t, ...options });
  const d = new TestDriver(memory, t.bar0);
  d.init({ numQueues: 3 });
  for (
    const cmd of [["ip", "link", "set", ifname, "netns", ns], ["ip", "-n", ns, "link", "set", ifname, "up"]]
  ) {
    const r = sh(...cmd);
    if (!r.ok) throw new Error(`Cannot run '${cmd.join(" ")}': ${r.err}`);
  }
  const cleanup = () => {
    handler.close();
    net.close();
    sh("ip", "netns", "del", ns);
  };
  return { ns, ifname, net, t, d, handler, memory, cleanup };
}

const PEER = `
import socket, sys
ifn, want, reply = sys.argv[1], set(sys.argv[2].split(",")), bytes.fromhex(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((ifn, 0))
s.settimeout(5)
print("ready", flush=True)
while want:
    f = s.recv(65536)
    et = f[12:14].hex()
    if et in want:
        print("frame " + f.hex(), flush=True)
        want.discard(et)
s.send(reply)
print("sent", flush=True)
`;

class Lines {
  #buf = "";
  readonly #reader: ReadableStreamDefaultReader<string>;
  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  }
  async next(): Promise<string> {
    for (;;) {
      const i = this.#buf.indexOf("\n");
      if (i >= 0) {
        const line = this.#buf.slice(0, i);
        this.#buf = this.#buf.slice(i + 1);
        return line;
      }
      const { value, done } = await this.#reader.read();
      if (done) throw new Error(`peer ended early; got '${this.#buf}'`);
      this.#buf += value;
    }
  }
}

function frame(dst: Uint8Array, src: Uint8Array, ethertype: number, payload: string): Uint8Array {
  const p = new TextEncoder().encode(payload);
  const f = new Uint8Array(Math.max(60, 14 + p.length));
  f.set(dst, 0);
  f.set(src, 6);
  new DataView(f.buffer).setUint16(12, ethertype);
  f.set(p, 14);
  return f;
}

function hex(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

Deno.test({
  name: "VirtioNet sends frames to a tap in a network namespace and receives frames injected there",
  ignore: skipTap !== undefined,
  async fn() {
    const r = rig("a");
    const peerMac = parseMac("02:00:00:00:00:01", "peer");
    const reply = frame(MAC, peerMac, 0x88b6, "hello guest");
    const peer = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        r.ns,
        "python3",
        "-c",
        PEER,
        r.ifname,
        `88b5,${ETH_P_RARP.toString(16)}`,
        hex(reply),
      ],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    try {
      const lines = new Lines(peer.stdout);
      assert.equal(await lines.next(), "ready");
      // Post RX buffers first, as a driver does.
      for (let i = 0; i < 8; i++) r.d.submit(NET_RX, [{ len: 1526 + VNET_HDR_BYTES, writable: true }]);
      r.handler.processRx();
      const out = frame(new Uint8Array(6).fill(0xff), MAC, 0x88b5, "hello host");
      const pkt = new Uint8Array(VNET_HDR_BYTES + out.length);
      pkt.set(out, VNET_HDR_BYTES);
      const head = r.d.submit(NET_TX, [{ data: pkt.subarray(0, VNET_HDR_BYTES), writable: false }, {
        data: pkt.subarray(VNET_HDR_BYTES),
        writable: false,
      }]);
      r.handler.processTx();
      assert.deepEqual(r.d.takeUsed(NET_TX), [{ id: head, len: 0 }]);
      r.net.selfAnnounceOnce();
      const seen = [await lines.next(), await lines.next()].map((l) => l.replace(/^frame /, ""));
      assert.ok(seen.includes(hex(out)), "the host saw the guest's frame");
      assert.ok(seen.includes(hex(rarpFrame(MAC))), "the host saw the RARP announce");
      assert.equal(await lines.next(), "sent");
      let got: Uint8Array | undefined;
      for (let i = 0; i < 200 && !got; i++) {
        r.handler.processRx();
        for (const u of r.d.takeUsed(NET_RX)) {
          const b = r.d.buffer(NET_RX, u.id, 0).subarray(0, u.len);
          if (b[VNET_HDR_BYTES + 12] === 0x88 && b[VNET_HDR_BYTES + 13] === 0xb6) got = b;
        }
        if (!got) await new Promise((res) => setTimeout(res, 10));
      }
      assert.ok(got, "the injected frame reached the RX queue");
      assert.deepEqual(got.subarray(VNET_HDR_BYTES, VNET_HDR_BYTES + reply.length), reply);
      assert.equal(got[10], 1, "num_buffers = 1");
      assert.ok(got.subarray(0, 10).every((b) => b === 0), "no offload flags");
    } finally {
      try {
        peer.kill();
      } catch { /* already gone */ }
      await peer.status;
      r.cleanup();
    }
  },
});

Deno.test({
  name: "VirtioNet announce sets VIRTIO_NET_S_ANNOUNCE and the driver's ack clears it; MAC set via control",
  ignore: skipTap !== undefined,
  fn() {
    const r = rig("b");
    try {
      assert.equal(formatMac(r.net.mac), "52:54:00:12:34:56");
      assert.equal(r.d.read16(0x2000 + NET_CFG_STATUS), VIRTIO_NET_S_LINK_UP);
      assert.ok(r.net.announce());
      assert.equal(r.d.read16(0x2000 + NET_CFG_STATUS), VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE);
      const ack = r.d.submit(NET_CTRL, [{
        data: Uint8Array.of(VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK),
        writable: false,
      }, {
        len: 1,
        writable: true,
      }]);
      const mac = r.d.submit(NET_CTRL, [{
        data: Uint8Array.of(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET),
        writable: false,
      }, {
        data: Uint8Array.of(0x52, 0x54, 0, 0xaa, 0xbb, 0xcc),
        writable: false,
      }, { len: 1, writable: true }]);
      r.handler.processCtrl();
      assert.equal(r.d.buffer(NET_CTRL, ack, 1)[0], VIRTIO_NET_OK);
      assert.equal(r.d.buffer(NET_CTRL, mac, 2)[0], VIRTIO_NET_OK);
      assert.equal(r.d.read16(0x2000 + NET_CFG_STATUS), VIRTIO_NET_S_LINK_UP);
      assert.equal(formatMac(r.net.mac), "52:54:00:aa:bb:cc");
    } finally {
      r.cleanup();
    }
  },
});

Deno.test({
  name: "VirtioNet is migratable",
  ignore: skipTap !== undefined,
  fn() {
    const tap = new Tap("", "net0");
    try {
      const transports = new WeakMap<VirtioNet, VirtioPciTransport>();
      const memory = fakeMemory(1 << 20);
      assertMigratable({
        make: () => {
          const net = new VirtioNet({ config: { id: "net0", ifname: "", mac: MAC }, tap });
          const t = testTransport({ plan: testPlan(net.info), memory, fire: () => {} });
          net.attach(t);
          transports.set(net, t);
          return net;
        },
        mutate: (net) => {
          const t = transports.get(net)!;
          new TestDriver(memory, t.bar0).init({ numQueues: 3 });
          assert.ok(net.announce());
          t.writeDeviceConfig(0, Uint8Array.of(0x52, 0x54, 0, 1, 2, 3), false);
        },
        invalid: [{ field: "mac", value: Uint8Array.of(1, 2, 3, 4, 5, 6) }, { field: "status", value: 9 }],
      });
    } finally {
      tap.close();
    }
  },
});

Deno.test("parseMac reads colon-separated hex and refuses multicast", () => {
  assert.deepEqual([...parseMac("52:54:00:AB:cd:01", "d")], [0x52, 0x54, 0, 0xab, 0xcd, 1]);
  assert.throws(
    () => parseMac("52-54-00-ab-cd-01", "virtio-net/n0"),
    /Cannot parse mac '52-54-00-ab-cd-01' of 'virtio-net\/n0'/,
  );
  assert.throws(() => parseMac("01:00:5e:00:00:01", "d"), /multicast/);
});

Deno.test("rarpFrame is QEMU's 60-byte reverse ARP with the MAC as sender and target", () => {
  const f = rarpFrame(MAC);
  assert.equal(f.length, 60);
  assert.equal(hex(f.subarray(0, 22)), "ffffffffffff525400123456803500010800060400" + "03");
  assert.deepEqual(f.subarray(22, 28), MAC);
  assert.deepEqual(f.subarray(32, 38), MAC);
});

const SENDER = `
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
for f in sys.argv[2:]:
    s.send(bytes.fromhex(f))
print("sent", flush=True)
`;

for (const batchRx of [true, false]) {
  Deno.test({
    name: `VirtioNet RX (${
      batchRx ? "io_uring batches" : "one readv per frame"
    }) reads frames straight into a chain of two buffers; one too big for it is dropped and the next lands there`,
    ignore: skipTap !== undefined,
    async fn() {
      const r = rig(batchRx ? "c" : "f", { batchRx });
      const peerMac = parseMac("02:00:00:00:00:02", "peer");
      const big = frame(MAC, peerMac, 0x88b7, "B".repeat(1000));
      const small = frame(MAC, peerMac, 0x88b7, "small one");
      try {
        const out = await new Deno.Command("ip", {
          args: ["netns", "exec", r.ns, "python3", "-c", SENDER, r.ifname, hex(big), hex(small)],
          stdout: "piped",
          stderr: "inherit",
        }).output();
        assert.equal(new TextDecoder().decode(out.stdout).trim(), "sent");
        let got: Uint8Array | undefined;
        const bigSeen = () => r.handler.stats.rxDropped;
        for (let i = 0; i < 50 && !got; i++) {
          // 12-byte header buffer + 200 bytes: the big frame cannot fit.
          r.d.submit(NET_RX, [{ len: VNET_HDR_BYTES, writable: true }, { len: 200, writable: true }]);
          r.handler.processRx();
          for (const u of r.d.takeUsed(NET_RX)) {
            const hdr = r.d.buffer(NET_RX, u.id, 0), body = r.d.buffer(NET_RX, u.id, 1);
            const b = new Uint8Array(u.len);
            b.set(hdr.subarray(0, Math.min(u.len, hdr.length)));
            if (u.len > hdr.length) b.set(body.subarray(0, u.len - hdr.length), hdr.length);
            assert.ok(u.len <= VNET_HDR_BYTES + 200);
            if (b[VNET_HDR_BYTES + 12] === 0x88 && b[VNET_HDR_BYTES + 13] === 0xb7) got = b;
          }
          if (!got) await new Promise((res) => setTimeout(res, 10));
        }
        assert.ok(got, "the small frame reached the RX queue");
        assert.deepEqual(got.subarray(VNET_HDR_BYTES), small);
        assert.equal(got[10], 1, "num_buffers = 1");
        assert.ok(got.subarray(0, 10).every((b) => b === 0), "no offload flags");
        assert.ok(bigSeen() >= 1, "the big frame was dropped");
      } finally {
        r.handler.close();
        r.cleanup();
      }
    },
  });
}

/** Sends `frames` into the tap from inside the namespace (they wait in the tap's queue). */
async function inject(r: ReturnType<typeof rig>, frames: Uint8Array[]): Promise<void> {
  const out = await new Deno.Command("ip", {
    args: ["netns", "exec", r.ns, "python3", "-c", SENDER, r.ifname, ...frames.map(hex)],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  assert.equal(new TextDecoder().decode(out.stdout).trim(), "sent");
}

/** The frames (after the vnet header) of the used RX entries, in used-ring order. */
function received(r: ReturnType<typeof rig>): { id: number; frame: Uint8Array }[] {
  return r.d.takeUsed(NET_RX).map((u) => ({
    id: u.id,
    frame: r.d.buffer(NET_RX, u.id, 0).slice(VNET_HDR_BYTES, u.len),
  }));
}

for (const batchRx of [true, false]) {
  Deno.test({
    name: `VirtioNet RX (${
      batchRx ? "io_uring batches" : "one readv per frame"
    }) fills chains in ring order, gives unused ones back, and says when the ring ran out`,
    ignore: skipTap !== undefined,
    async fn() {
      const r = rig(batchRx ? "d" : "e", { batchRx });
      const peerMac = parseMac("02:00:00:00:00:03", "peer");
      const frames = Array.from({ length: 9 }, (_, i) => frame(MAC, peerMac, 0x88b8, `frame ${i}`));
      try {
        const heads: number[] = [];
        for (let i = 0; i < 8; i++) {
          heads.push(r.d.submit(NET_RX, [{ len: 1526 + VNET_HDR_BYTES, writable: true }]));
        }
        await inject(r, frames.slice(0, 5));
        const got: { id: number; frame: Uint8Array }[] = [];
        for (let i = 0; i < 100 && got.length < 5; i++) {
          r.handler.processRx();
          got.push(...received(r).filter((g) => g.frame[12] === 0x88 && g.frame[13] === 0xb8));
          if (got.length < 5) await new Promise((res) => setTimeout(res, 10));
        }
        assert.deepEqual(got.map((g) => g.id), heads.slice(0, 5), "the first five chains, in ring order");
        assert.deepEqual(got.map((g) => g.frame.subarray(0, 60)), frames.slice(0, 5));
        if (batchRx) {
          assert.ok(r.handler.rxBatches >= 1 && r.handler.rxBatches < 5, `${r.handler.rxBatches} batches`);
        } else assert.equal(r.handler.rxBatches, 0);
        assert.equal(r.handler.rxNeedsBuffers, false, "three chains are left");
        // Four more frames for three chains: the ring runs out, the fourth frame waits in the tap.
        await inject(r, frames.slice(5, 9));
        for (let i = 0; i < 100 && got.length < 8; i++) {
          r.handler.processRx();
          got.push(...received(r).filter((g) => g.frame[12] === 0x88 && g.frame[13] === 0xb8));
          if (got.length < 8) await new Promise((res) => setTimeout(res, 10));
        }
        assert.deepEqual(got.slice(5).map((g) => g.id), heads.slice(5, 8));
        assert.equal(r.handler.rxNeedsBuffers, true, "no chain left");
        const last = r.d.submit(NET_RX, [{ len: 1526 + VNET_HDR_BYTES, writable: true }]);
        r.handler.processRx();
        const tail = received(r);
        assert.deepEqual(tail.map((g) => g.id), [last]);
        assert.deepEqual(tail[0]!.frame.subarray(0, 60), frames[8], "the frame that waited in the tap");
        assert.equal(r.handler.rxNeedsBuffers, true);
        assert.equal(r.handler.stats.rxDropped, 0);
      } finally {
        r.handler.close();
        r.cleanup();
      }
    },
  });
}

const COLLECT = `
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
s.settimeout(5)
n = int(sys.argv[2])
print("ready", flush=True)
while n > 0:
    f = s.recv(65536)
    if f[12:14].hex() == "88ba":
        print(f[14:22].decode(), flush=True)
        n -= 1
`;

for (const batchTx of [true, false]) {
  Deno.test({
    name: `VirtioNet TX (${
      batchTx ? "io_uring batches" : "one writev per frame"
    }) sends a pass's frames in ring order and completes every chain`,
    ignore: skipTap !== undefined,
    async fn() {
      const r = rig(batchTx ? "g" : "h", { batchTx });
      const count = 70; // more than one batch
      const peer = new Deno.Command("ip", {
        args: ["netns", "exec", r.ns, "python3", "-c", COLLECT, r.ifname, String(count)],
        stdout: "piped",
        stderr: "inherit",
      }).spawn();
      try {
        const lines = new Lines(peer.stdout);
        assert.equal(await lines.next(), "ready");
        const heads: number[] = [];
        for (let i = 0; i < count; i++) {
          const f = frame(new Uint8Array(6).fill(0xff), MAC, 0x88ba, `tx ${String(i).padStart(5, "0")}`);
          const pkt = new Uint8Array(VNET_HDR_BYTES + f.length);
          pkt.set(f, VNET_HDR_BYTES);
          // Odd frames in two buffers (header, frame), even ones in one.
          heads.push(r.d.submit(
            NET_TX,
            i % 2
              ? [{ data: pkt.subarray(0, VNET_HDR_BYTES), writable: false }, {
                data: pkt.subarray(VNET_HDR_BYTES),
                writable: false,
              }]
              : [{ data: pkt, writable: false }],
          ));
        }
        r.handler.processTx();
        const used = r.d.takeUsed(NET_TX);
        assert.deepEqual(used.map((u) => u.id).sort((a, b) => a - b), [...heads].sort((a, b) => a - b));
        assert.ok(used.every((u) => u.len === 0));
        const seen: string[] = [];
        for (let i = 0; i < count; i++) seen.push(await lines.next());
        assert.deepEqual(seen, Array.from({ length: count }, (_, i) => `tx ${String(i).padStart(5, "0")}`));
        assert.equal(r.handler.stats.txFrames, count);
        if (batchTx) assert.equal(r.handler.txBatches, 2, "64 frames, then 6");
        else assert.equal(r.handler.txBatches, 0);
      } finally {
        try {
          peer.kill();
        } catch { /* already gone */ }
        await peer.status;
        r.handler.close();
        r.cleanup();
      }
    },
  });
}

Deno.test({
  name:
    "tapUring checks RWF_NOWAIT reads on the fd: a tap passes, a bad fd is refused (the NIC then reads one frame a call)",
  ignore: skipTap !== undefined,
  fn() {
    const tap = new Tap("", "net0");
    try {
      tapUring(4, tap.fd).close();
      const fd = tap.fd;
      tap.close();
      assert.throws(() => tapUring(4, fd), /RWF_NOWAIT read of the tap failed: errno 9/);
    } finally {
      tap.close();
    }
  },
});

Deno.test({
  name:
    "VirtioNet RX (io_uring batches): a bogus ring entry met while a batch is taken still delivers the frames read before it, then the queue needs a reset",
  ignore: skipTap !== undefined,
  async fn() {
    const r = rig("i", { batchRx: true });
    const peerMac = parseMac("02:00:00:00:00:04", "peer");
    const frames = [0, 1].map((i) => frame(MAC, peerMac, 0x88bb, `bogus ${i}`));
    try {
      const heads = [0, 1].map(() => r.d.submit(NET_RX, [{ len: 1526 + VNET_HDR_BYTES, writable: true }]));
      await inject(r, frames);
      // Two frames have arrived: the first pass takes at least 4 chains, so it meets the bogus third entry.
      r.d.pushAvail(NET_RX, 1000); // names a descriptor outside the table of 256
      r.handler.processRx();
      const got = received(r);
      assert.deepEqual(got.map((g) => g.id), heads);
      assert.deepEqual(got.map((g) => g.frame.subarray(0, 60)), frames);
      assert.ok((r.t.status & STATUS_NEEDS_RESET) !== 0, "the queue is broken: NEEDS_RESET");
    } finally {
      r.handler.close();
      r.cleanup();
    }
  },
});
