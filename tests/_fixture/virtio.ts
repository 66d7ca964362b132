/**
 * Helpers of the black-box virtio tests (`tests/virtio_*_test.ts`, `tests/migration_devices_test.ts`):
 * the probe guest's sector pattern (guest/blk.zig, as tests/guest_virtio_qemu_test.ts decodes it),
 * raw images, ferry's `-drive`/`-device`/`-netdev` arguments, a network namespace with taps (and a
 * bridge) and a streaming host side in python3, and a scripted migration destination.
 * @module
 */
import assert from "node:assert/strict";
import { exists } from "./ferry.ts";
import { scriptedDestination, sh, sleep } from "./migration.ts";
import type { Ferry } from "./ferry.ts";

export const SECTOR = 512;
const MAGIC = 0x4b4c_4245_424f_5250n; // "PROBEBLK"
const M64 = (1n << 64n) - 1n;
/** The MAC ferry's tests give the guest. */
export const GUEST_MAC = "52:54:00:12:34:56";
/** The probe's default `ip=`. */
export const GUEST_IP = "10.0.2.15";

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
export function encodeSector(round: number, sector: number): Uint8Array {
  const out = new Uint8Array(SECTOR);
  const dv = new DataView(out.buffer);
  const w: bigint[] = [MAGIC, BigInt(round), BigInt(sector)];
  const f = mix((BigInt(round) << 40n) ^ BigInt(sector));
  for (let i = 3; i < 63; i++) w.push((f + 0x9e37_79b9_7f4a_7c15n * BigInt(i)) & M64);
  w.push(checksum(w));
  w.forEach((v, i) => dv.setBigUint64(i * 8, v, true));
  return out;
}

/**
 * Decodes one sector: the round it holds, or why it is not a probe sector for `sector`. Only the
 * header and checksum are checked (fast enough for every sector of a few MiB).
 */
export function decodeSector(bytes: Uint8Array, sector: number): { round: number } | { bad: string } {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, SECTOR);
  const w = Array.from({ length: 64 }, (_, i) => dv.getBigUint64(i * 8, true));
  if (w[0] !== MAGIC) return { bad: "magic" };
  if (w[63] !== checksum(w.slice(0, 63))) return { bad: "checksum" };
  if (w[2] !== BigInt(sector)) return { bad: `sector ${w[2]}` };
  return { round: Number(w[1]) };
}

/**
 * Asserts that sectors `0 .. sectors` of the image at `path` all hold round `round` (spot-checking
 * a few sectors byte for byte against the encoder) and that everything after them is zero.
 */
export function assertImageHoldsRound(path: string, sectors: number, round: number): void {
  const image = Deno.readFileSync(path);
  const wrong: string[] = [];
  for (let s = 0; s < sectors; s++) {
    const d = decodeSector(image.subarray(s * SECTOR, (s + 1) * SECTOR), s);
    if (!("round" in d) || d.round !== round) {
      wrong.push(`sector ${s}: ${JSON.stringify(d)}`);
      if (wrong.length >= 8) break;
    }
  }
  assert.deepEqual(wrong, [], `the image holds round ${round} in sectors 0..${sectors - 1}`);
  for (const s of [0, 1, sectors >> 1, sectors - 1]) {
    assert.deepEqual(
      image.subarray(s * SECTOR, (s + 1) * SECTOR),
      encodeSector(round, s),
      `sector ${s} bytes`,
    );
  }
  assert.ok(image.subarray(sectors * SECTOR).every((b) => b === 0), "sectors past blk_mib are untouched");
}

/** Creates a raw image of `mib` MiB (zeros, or `content` then zeros) at `path`. */
export function makeImage(path: string, mib: number, content?: Uint8Array): void {
  Deno.writeFileSync(path, content ?? new Uint8Array(0));
  Deno.truncateSync(path, mib << 20);
}

/** An image whose first `sectors` sectors hold round `round`'s pattern. */
export function patternImage(mib: number, sectors: number, round: number): Uint8Array {
  const image = new Uint8Array(mib << 20);
  for (let s = 0; s < sectors; s++) image.set(encodeSector(round, s), s * SECTOR);
  return image;
}

// ------------------------------------------------------------------ command lines
/** ferry's `-drive` + `-device virtio-blk-pci` arguments for drive/device `d0`. */
export function blkArgs(
  img: string,
  o: { readonly?: boolean; direct?: boolean; serial?: string; addr?: string } = {},
): string[] {
  const drive = `file=${img},id=d0,readonly=${o.readonly ? "on" : "off"},direct=${o.direct ? "on" : "off"}`;
  const dev = `virtio-blk-pci,drive=d0,id=d0,bus=pcie.0,addr=${o.addr ?? "0x2"}` +
    (o.serial !== undefined ? `,serial=${o.serial}` : "");
  return ["-drive", drive, "-device", dev];
}

/** ferry's `-netdev tap` + `-device virtio-net-pci` arguments for netdev/device `n0`. */
export function netArgs(tap: string, o: { mac?: string; addr?: string } = {}): string[] {
  return [
    "-netdev",
    `tap,id=n0,ifname=${tap}`,
    "-device",
    `virtio-net-pci,netdev=n0,id=n0,mac=${o.mac ?? GUEST_MAC},bus=pcie.0,addr=${o.addr ?? "0x3"}`,
  ];
}

/** `PROBE BLK VERIFY ok round=N` rounds in `lines` (or on the console of a ferry), in order. */
export function verifiedRounds(from: Ferry | string[]): number[] {
  return (Array.isArray(from) ? from : from.lines).flatMap((l) => {
    const m = l.match(/PROBE BLK VERIFY ok round=(\d+)/);
    return m ? [Number(m[1])] : [];
  });
}

/**
 * The console of one guest that ran in `ferries` in turn (every one but the last has exited, so
 * its unterminated tail is in its lines), with a line that a switchover split joined again: the
 * guest's `rep outsb` can be paused after its first byte, and the destination prints the rest.
 */
export function joinedConsole(ferries: Ferry[]): string[] {
  const out: string[] = [];
  for (const f of ferries) {
    const lines = [...f.lines];
    if (out.length > 0 && lines.length > 0 && !lines[0]!.startsWith("PROBE")) {
      out.push(out.pop()! + lines.shift()!);
    }
    out.push(...lines);
  }
  return out;
}

/** Asserts no FAIL, EXCEPTION, TIMEOUT, ERROR, failed read or flush, or second BOOT on the console of `f`. */
export function assertClean(f: Ferry, what: string): void {
  const bad = f.lines.filter((l) => /FAIL|EXCEPTION|TIMEOUT|ERROR|BLK (READ|FLUSH) status=/.test(l));
  assert.deepEqual(bad, [], `${what}: guest reported failures\n${f.transcript()}`);
  assert.ok(f.lines.filter((l) => l.includes("PROBE BOOT")).length <= 1, `${what}: guest rebooted`);
}

/** The exit status of ferry once its guest powered off (bounded). */
export async function waitPoweroff(f: Ferry, timeoutMs: number): Promise<Deno.CommandStatus> {
  await f.waitLine(/PROBE EXIT poweroff/, timeoutMs);
  return await f.wait(5000);
}

// ------------------------------------------------------------------ network namespace and host side

/** Why the network tests cannot run here (no /dev/net/tun, ip netns, python3), or undefined. */
export async function netSkipReason(): Promise<string | undefined> {
  if (!exists("/dev/net/tun")) return "/dev/net/tun is missing";
  try {
    const py = await sh("python3", "-c", "import socket; socket.AF_PACKET");
    if (py.code !== 0) return `python3 cannot run the host side: ${py.out.trim()}`;
  } catch {
    return "python3 is not installed (the host side of the test)";
  }
  const ns = `ferry-vt-probe${Deno.pid}`;
  try {
    const add = await sh("ip", "netns", "add", ns);
    if (add.code !== 0) return `ip netns add fails: ${add.out.trim()}`;
  } catch {
    return "the ip command is not installed";
  }
  await sh("ip", "netns", "del", ns);
  return undefined;
}

/**
 * A network namespace with `taps` tap interfaces (persistent, up, owned by nobody until a ferry
 * attaches). With one tap it carries 10.0.2.2/24; with more they are enslaved to bridge `br0`,
 * which carries the address.
 */
export interface NetLab {
  ns: string;
  taps: string[];
  /** The interface that carries 10.0.2.2/24: the tap, or the bridge. */
  addrIf: string;
  remove(): Promise<void>;
}

let labSeq = 0;
/** Creates a {@linkcode NetLab}; throws naming the failing step. */
export async function createNetLab(taps: number): Promise<NetLab> {
  const tag = `${Deno.pid % 100000}${labSeq++}`;
  const ns = `ferry-vt${tag}`;
  const names = Array.from({ length: taps }, (_, i) => `vt${tag}t${i}`);
  const addrIf = taps === 1 ? names[0]! : "br0";
  const remove = async () => {
    await sh("ip", "netns", "del", ns); // deletes the taps and the bridge with it
  };
  const steps: string[][] = [["netns", "add", ns], ["-n", ns, "link", "set", "lo", "up"]];
  if (taps > 1) {
    steps.push(["-n", ns, "link", "add", "br0", "type", "bridge"]);
    steps.push(["-n", ns, "link", "set", "br0", "up"]);
  }
  for (const t of names) {
    steps.push(["-n", ns, "tuntap", "add", "dev", t, "mode", "tap"]);
    if (taps > 1) steps.push(["-n", ns, "link", "set", t, "master", "br0"]);
    steps.push(["-n", ns, "link", "set", t, "up"]);
  }
  steps.push(["-n", ns, "addr", "add", "10.0.2.2/24", "dev", addrIf]);
  for (const s of steps) {
    const r = await sh("ip", ...s);
    if (r.code !== 0) {
      await remove();
      throw new Error(`'ip ${s.join(" ")}' failed: ${r.out.trim()}`);
    }
  }
  return { ns, taps: names, addrIf, remove };
}

/**
 * The host side, inside the namespace: a packet socket on each tap (argv[1], comma-separated)
 * reports every frame the guest's MAC sends into it (UDP broadcasts to 7777 with their `PROBE <seq>`, other frames with their
 * ethertype); a UDP socket sends `ping <n>` to the guest's 7778 every 100 ms and reports the
 * echoes it gets on 7779. One JSON object per line; runs for argv[4] seconds or until stdin closes.
 */
const HOST_SIDE = `
import json, select, socket, struct, sys, time
ifnames, guest_ip, guest_mac, secs = sys.argv[1].split(","), sys.argv[2], bytes.fromhex(sys.argv[3].replace(":", "")), float(sys.argv[4])
raws = {}
for name in ifnames:
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); raw.bind((name, 0)); raws[raw] = name
echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); echo.bind(("", 7779))
snd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t0 = time.time()
def out(ev):
    ev["t"] = round(time.time() - t0, 3)
    print(json.dumps(ev), flush=True)
out({"kind": "ready"})
end, n, next_ping = t0 + secs, 0, 0.0
while time.time() < end:
    now = time.time()
    if now >= next_ping:
        n += 1
        try:
            snd.sendto(("ping %d" % n).encode(), (guest_ip, 7778))
        except OSError:
            pass
        next_ping = now + 0.1
    r, _, _ = select.select([*raws, echo, sys.stdin], [], [], 0.02)
    if sys.stdin in r and not sys.stdin.readline():
        break
    for raw in (s for s in r if s in raws):
        f, addr = raw.recvfrom(65535)
        if addr[2] == socket.PACKET_OUTGOING or f[6:12] != guest_mac:
            continue
        et = struct.unpack("!H", f[12:14])[0]
        ev = {"kind": "frame", "ethertype": et, "dst": f[0:6].hex(":"), "if": raws[raw]}
        if et == 0x8035:
            ev["sha"], ev["tha"], ev["len"] = f[22:28].hex(":"), f[32:38].hex(":"), len(f)
        if et == 0x0800 and len(f) >= 34 and f[23] == 17:
            ihl = (f[14] & 15) * 4
            sport, dport, ulen = struct.unpack("!HHH", f[14 + ihl:20 + ihl])
            payload = f[22 + ihl:14 + ihl + ulen].decode(errors="replace")
            if dport == 7777 and payload.startswith("PROBE "):
                ev = {"kind": "bcast", "seq": int(payload.split()[1]), "dst": ev["dst"], "if": ev["if"]}
        out(ev)
    if echo in r:
        d, a = echo.recvfrom(2048)
        out({"kind": "echo", "payload": d.decode(errors="replace"), "from": a[0], "port": a[1]})
`;

/** One event of the host side. */
export interface HostEvent {
  kind: "ready" | "frame" | "bcast" | "echo";
  t: number;
  seq?: number;
  ethertype?: number;
  dst?: string;
  /** RARP: sender and target hardware addresses, frame length. */
  sha?: string;
  tha?: string;
  len?: number;
  /** The tap the frame came in on. */
  if?: string;
  payload?: string;
  from?: string;
  port?: number;
}

/** The running host side of a {@linkcode NetLab}. */
export class HostSide {
  readonly events: HostEvent[] = [];
  readonly #child: Deno.ChildProcess;
  readonly #pump: Promise<void>;
  #stderr = "";

  constructor(lab: NetLab, seconds: number) {
    const child = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        lab.ns,
        "python3",
        "-u",
        "-c",
        HOST_SIDE,
        lab.taps.join(","),
        GUEST_IP,
        GUEST_MAC,
        String(seconds),
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    this.#pump = (async () => {
      let buf = "";
      const err = (async () => {
        for await (const c of child.stderr.pipeThrough(new TextDecoderStream())) this.#stderr += c;
      })();
      for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
        buf += chunk;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (line.startsWith("{")) this.events.push(JSON.parse(line) as HostEvent);
        }
      }
      await err;
    })();
  }

  /** Resolves once an event matching `pred` (from index `from` on) is there; bounded. */
  async waitFor(pred: (e: HostEvent) => boolean, timeoutMs: number, from = 0): Promise<HostEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const e = this.events.slice(from).find(pred);
      if (e) return e;
      if (Date.now() > deadline) {
        throw new Error(`The host side saw no matching event in ${timeoutMs} ms\n${this.transcript()}`);
      }
      await sleep(20);
    }
  }

  /** The last events and stderr, for failure messages. */
  transcript(): string {
    return `--- host side (last 30 of ${this.events.length}) ---\n${
      this.events.slice(-30).map((e) => JSON.stringify(e)).join("\n")
    }\n--- host side stderr ---\n${this.#stderr}`;
  }

  /** Stops the host side (closes its stdin, then kills it if needed) and waits for it. */
  async stop(): Promise<void> {
    try {
      await this.#child.stdin.close();
    } catch { /* closed */ }
    const t = setTimeout(() => {
      try {
        this.#child.kill("SIGKILL");
      } catch { /* exited */ }
    }, 2000);
    await this.#child.status;
    clearTimeout(t);
    await this.#pump;
  }
}

// ------------------------------------------------------------------ a scripted migration destination
/**
 * A destination that takes everything up to `complete` and then refuses with a `nack`, running
 * `onComplete` first (e.g. to check the lock while the source does not hold it).
 */
export function nackingDestination(
  path: string,
  onComplete?: () => Promise<void>,
): { listener: Deno.Listener; done: Promise<number[]> } {
  return scriptedDestination(path, "nack", onComplete);
}

// ------------------------------------------------------------------ image locks
/** The `flock` locks on the file at `path` from /proc/locks: kind (WRITE = exclusive, READ = shared) and pid. */
export function flockHolders(path: string): { kind: string; pid: number }[] {
  const ino = Deno.statSync(path).ino;
  return Deno.readTextFileSync("/proc/locks").split("\n").flatMap((l) => {
    const m = l.match(/^\d+: FLOCK\s+\S+\s+(\S+)\s+(\d+)\s+[0-9a-f]+:[0-9a-f]+:(\d+) /);
    return m && Number(m[3]) === ino ? [{ kind: m[1]!, pid: Number(m[2]) }] : [];
  });
}
