/**
 * A fake {@linkcode MigrationVm} for tests: RAM in ArrayBuffers, a fake KVM dirty log the "guest"
 * marks, and counters for what migration did to it. Private to this folder.
 * @module
 */
import { GuestMemory, newDirtyBitmap, PAGE_SIZE } from "../memory/guest_memory.ts";
import type { MigrationVm, Section } from "./vm_port.ts";
import { MigrationStatusTracker } from "./status.ts";
import { receiveMigration } from "./destination.ts";

/** Options of {@linkcode FakeVm}. */
export interface FakeVmOptions {
  /** RAM regions. @default one region of 4 MiB at gpa 0 */
  regions?: { gpa: number; sizeBytes: number }[];
  config?: Record<string, string>;
  host?: Record<string, string>;
  sections?: Section[];
  /** Makes `restoreState` throw this message. */
  restoreError?: string;
  /** Makes `saveState` throw this message. */
  saveError?: string;
  /** Delay inside `onSwitchover`. */
  switchoverDelayMs?: number;
  /** Starts paused (a destination). */
  paused?: boolean;
}

/** Default attributes both sides of a test agree on. */
export const FAKE_CONFIG = {
  "-m": "4194304",
  "-smp": "2",
  "-machine": "q35",
  "device rootfs: addr": "0x2.0",
};
/** Default host attributes. */
export const FAKE_HOST = {
  "cpu vendor": "GenuineIntel",
  "kvm api version": "12",
  "platform msrs": "0x4b564d10",
};

/** A fake VM over plain buffers. */
export class FakeVm implements MigrationVm {
  readonly memory: GuestMemory;
  paused: boolean;
  pauseCount = 0;
  resumeCount = 0;
  switchoverCount = 0;
  rollbackCount = 0;
  dirtyLogging = false;
  restored: Section[] | undefined;
  readonly options: FakeVmOptions;
  #kvmLog: Uint32Array[];
  #dirtier: ReturnType<typeof setInterval> | undefined;
  #seed = 12345;

  constructor(options: FakeVmOptions = {}) {
    this.options = options;
    const regions = options.regions ?? [{ gpa: 0, sizeBytes: 4 * 1024 * 1024 }];
    this.memory = new GuestMemory({
      regions: regions.map((r, i) => ({
        gpa: r.gpa,
        sizeBytes: r.sizeBytes,
        slot: i,
        hostAddr: 0n,
        vmmDirty: newDirtyBitmap(r.sizeBytes),
        buffer: new ArrayBuffer(r.sizeBytes),
      })),
    });
    this.#kvmLog = regions.map((r) => new Uint32Array(Math.ceil(r.sizeBytes / PAGE_SIZE / 32)));
    this.paused = options.paused ?? false;
  }

  configAttributes(): Record<string, string> {
    return { ...(this.options.config ?? FAKE_CONFIG) };
  }
  hostAttributes(): Record<string, string> {
    return { ...(this.options.host ?? FAKE_HOST) };
  }
  startDirtyLog(): void {
    this.dirtyLogging = true;
    for (const l of this.#kvmLog) l.fill(0);
    for (const r of this.memory.regions) new Int32Array(r.vmmDirty).fill(0);
  }
  syncDirtyLog(): Uint32Array[] {
    this.#catchUpDirtying();
    return this.#kvmLog.map((l, i) => {
      const out = l.slice();
      l.fill(0);
      this.memory.takeVmmDirty(i, out);
      return out;
    });
  }
  stopDirtyLog(): void {
    this.dirtyLogging = false;
  }
  pausedByMigration = true;
  async pause(): Promise<void> {
    this.pausedByMigration = !this.paused;
    await Promise.resolve();
    this.pauseCount++;
    this.paused = true;
  }
  async resumeAfterRollback(): Promise<void> {
    await Promise.resolve();
    this.resumeCount++;
    this.paused = false;
  }
  /** The fake runs an incoming guest the way a rollback resumes one (counted alike). */
  startIncomingGuest(): Promise<void> {
    return this.resumeAfterRollback();
  }
  /** The vCPU throttle in force (auto-converge); the dirtier skips that share of its ticks. */
  cpuThrottle = 0;
  /** Every throttle change, in order. */
  readonly throttleHistory: number[] = [];
  async setCpuThrottle(percent: number): Promise<void> {
    await Promise.resolve();
    if (percent === this.cpuThrottle) return;
    this.cpuThrottle = percent;
    this.throttleHistory.push(percent);
  }
  async saveState(): Promise<Section[]> {
    await Promise.resolve();
    if (!this.paused) throw new Error("saveState called on a running VM");
    if (this.options.saveError) throw new Error(this.options.saveError);
    return (this.options.sections ?? []).map((s) => ({ ...s, payload: s.payload.slice() }));
  }
  async restoreState(sections: Section[]): Promise<void> {
    await Promise.resolve();
    if (this.options.restoreError) throw new Error(this.options.restoreError);
    this.restored = sections;
  }
  async onSwitchover(): Promise<void> {
    this.switchoverCount++;
    if (this.options.switchoverDelayMs) {
      await new Promise((r) => setTimeout(r, this.options.switchoverDelayMs));
    }
  }
  async onRollback(): Promise<void> {
    await Promise.resolve();
    this.rollbackCount++;
  }

  /** A guest write: raw bytes, seen by the fake KVM log only (like a vCPU store). */
  guestWrite(gpa: number, bytes: Uint8Array): void {
    const r = this.memory.regionOf(gpa, bytes.length);
    if (!r) throw new RangeError(`guestWrite outside RAM: 0x${gpa.toString(16)}`);
    const off = gpa - r.gpa;
    r.bytes.set(bytes, off);
    if (!this.dirtyLogging) return;
    const log = this.#kvmLog[this.memory.regions.indexOf(r)]!;
    for (let p = off >>> 12; p <= (off + bytes.length - 1) >>> 12; p++) log[p >>> 5]! |= 1 << (p & 31);
  }

  #rand(): number {
    this.#seed = (Math.imul(this.#seed, 1103515245) + 12345) >>> 0;
    return this.#seed;
  }

  /** Fills RAM with a page pattern; every `zeroEvery`-th page stays zero. */
  fillPattern(zeroEvery = 4): void {
    for (const r of this.memory.regions) {
      const words = new Uint32Array(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength / 4);
      for (let p = 0; p < r.sizeBytes / PAGE_SIZE; p++) {
        const w = p * 1024;
        if (p % zeroEvery === 0) {
          words.fill(0, w, w + 1024);
          continue;
        }
        for (let i = 0; i < 1024; i += 64) words[w + i] = (r.gpa / PAGE_SIZE + p) * 2654435761 + i >>> 0;
        words[w + 1023] = p;
      }
    }
  }

  /** While running, writes `pages` random pages every `intervalMs` (a dirtying guest). */
  startDirtying(intervalMs: number, pages: number): void {
    let tick = 0;
    this.#dirtier = setInterval(() => {
      if (this.paused) return;
      // Throttled: no guest time in that share of the ticks (spread over each 100 ticks).
      if ((tick++ * 37) % 100 < this.cpuThrottle) return;
      for (let i = 0; i < pages; i++) {
        const r = this.memory.regions[this.#rand() % this.memory.regions.length]!;
        const p = this.#rand() % (r.sizeBytes / PAGE_SIZE);
        const v = new Uint8Array(8);
        new DataView(v.buffer).setUint32(0, this.#rand(), true);
        new DataView(v.buffer).setUint32(4, this.#rand() | 1, true);
        this.guestWrite(r.gpa + p * PAGE_SIZE + (this.#rand() % 512) * 8, v);
      }
      // A device write through GuestMemory (VMM bitmap), as a virtio used ring would.
      const r0 = this.memory.regions[0]!;
      this.memory.writeU32(r0.gpa + (this.#rand() % (r0.sizeBytes / 4)) * 4, this.#rand());
    }, intervalMs);
  }

  #pagesPerSec = 0;
  #dirtiedAtMs = 0;

  /**
   * A guest that dirties `pagesPerSec` random pages per second of wall time while running, less
   * the throttle's share; the pages are written at each sync, for the time since the previous
   * one. Unlike {@linkcode startDirtying} its rate does not depend on timers firing on a loaded host.
   */
  dirtyAtRate(pagesPerSec: number): void {
    this.#pagesPerSec = pagesPerSec;
    this.#dirtiedAtMs = performance.now();
  }

  #catchUpDirtying(): void {
    if (this.#pagesPerSec === 0) return;
    const now = performance.now();
    const seconds = (now - this.#dirtiedAtMs) / 1000;
    this.#dirtiedAtMs = now;
    if (this.paused) return;
    const n = Math.floor(this.#pagesPerSec * seconds * (1 - this.cpuThrottle / 100));
    const v = new Uint8Array(8);
    for (let i = 0; i < n; i++) {
      const r = this.memory.regions[this.#rand() % this.memory.regions.length]!;
      const p = this.#rand() % (r.sizeBytes / PAGE_SIZE);
      new DataView(v.buffer).setUint32(0, this.#rand() | 1, true);
      this.guestWrite(r.gpa + p * PAGE_SIZE + (this.#rand() % 512) * 8, v);
    }
  }

  stopDirtying(): void {
    this.#pagesPerSec = 0;
    clearInterval(this.#dirtier);
    this.#dirtier = undefined;
  }
}

/** Index of the first differing byte of two VMs' RAM, or -1 when equal. */
export function firstRamDifference(a: FakeVm, b: FakeVm): number {
  let base = 0;
  for (let i = 0; i < a.memory.regions.length; i++) {
    const x = a.memory.regions[i]!.bytes;
    const y = b.memory.regions[i]!.bytes;
    if (x.length !== y.length) return base;
    const xw = new Int32Array(x.buffer, x.byteOffset, x.length / 4);
    const yw = new Int32Array(y.buffer, y.byteOffset, y.length / 4);
    for (let k = 0; k < xw.length; k++) if (xw[k] !== yw[k]) return base + k * 4;
    base += x.length;
  }
  return -1;
}

/** A destination listening for one migration, for tests. */
export interface TestDestination {
  /** The uri the source should use. */
  uri: string;
  /** Settles with `null` on success or the error. */
  result: Promise<Error | null>;
  status: MigrationStatusTracker;
}

/**
 * Starts `receiveMigration` on `kind` (tcp on 127.0.0.1 with an ephemeral port, or unix in `dir`).
 */
export async function listenDestination(
  vm: MigrationVm,
  kind: "tcp" | "unix",
  dir?: string,
  options: { signal?: AbortSignal } = {},
): Promise<TestDestination> {
  const status = new MigrationStatusTracker();
  const listenUri = kind === "tcp" ? "tcp:127.0.0.1:0" : `unix:${dir ?? Deno.makeTempDirSync()}/migrate.sock`;
  const { promise: listening, resolve } = Promise.withResolvers<string>();
  const result = receiveMigration(vm, listenUri, status, {
    ...options,
    onListening(addr) {
      resolve(addr.transport === "tcp" ? `tcp:127.0.0.1:${(addr as Deno.NetAddr).port}` : listenUri);
    },
  }).then(() => null, (e: Error) => e);
  const uri = await Promise.race([listening, result.then((e) => Promise.reject(e))]);
  return { uri, result, status };
}
