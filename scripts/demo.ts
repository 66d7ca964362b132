/**
 * The main job (`deno task demo`): boot the default guest on one ferry, start a second ferry as
 * the migration destination, migrate live over a UNIX socket with a progress view, and show the
 * guest's console continuing on the destination. Exits 0 only when the migration completed and
 * the guest verified its memory on the destination.
 *
 * Environment: `FERRY_DEMO_KERNEL` / `FERRY_DEMO_APPEND` boot another kernel (a Linux kernel on a
 * host where one runs), `FERRY_DEMO_SECONDS` how long to watch the destination (default 3).
 * @module
 */
import { runClient } from "../src/client/commands.ts";
import { QmpClient } from "../src/client/qmp_client.ts";
import { ferryRunArgs } from "./bundle.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const enc = new TextEncoder();
function say(s: string): void {
  Deno.stdout.writeSync(enc.encode(s + "\n"));
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isSocket;
  } catch {
    return false;
  }
}

const kernel = Deno.env.get("FERRY_DEMO_KERNEL") ?? `${ROOT}zig-out/guest/probe.elf`;
const append = Deno.env.get("FERRY_DEMO_APPEND") ?? "mode=pattern mib=8 interval_ms=250";
const watchSeconds = Number(Deno.env.get("FERRY_DEMO_SECONDS") ?? "3");
const dir = Deno.makeTempDirSync({ prefix: "ferry-demo-" });
const uri = `unix:${dir}/migrate.sock`;

function vmArgs(name: string, extra: string[] = []): string[] {
  return [
    ...ferryRunArgs(),
    "-machine",
    "q35",
    "-m",
    "512M",
    "-smp",
    "2",
    "-kernel",
    kernel,
    "-append",
    append,
    "-serial",
    "stdio",
    "-qmp",
    `unix:${dir}/${name}.sock,server,nowait`,
    "-name",
    name,
    ...extra,
  ];
}

interface Vm {
  child: Deno.ChildProcess;
  lines: string[];
  done: Promise<void>;
}

function start(name: string, extra: string[] = []): Vm {
  const child = new Deno.Command(Deno.execPath(), {
    args: vmArgs(name, extra),
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  })
    .spawn();
  const lines: string[] = [];
  const tag = `[${name}]`.padEnd(14);
  const pump = async (s: ReadableStream<Uint8Array>, isErr: boolean) => {
    const dec = new TextDecoder();
    let buf = "";
    for await (const c of s) {
      buf += dec.decode(c, { stream: true });
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const l = buf.slice(0, i).replace(/\r$/, "");
        buf = buf.slice(i + 1);
        if (!isErr) lines.push(l);
        say(`${tag} ${isErr ? "! " : ""}${l}`);
      }
    }
  };
  return {
    child,
    lines,
    done: Promise.all([pump(child.stdout, false), pump(child.stderr, true)]).then(() => {}),
  };
}

async function waitFor(vm: Vm, re: RegExp, timeoutMs: number, from = 0): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (vm.lines.slice(from).some((l) => re.test(l))) return true;
    await sleep(50);
  }
  return false;
}

say("ferry live-migration demo");
say(`  guest: ${kernel} (${append}), 512 MiB, 2 vCPUs; migration over ${uri}`);
say("");
const src = start("source");
let dst: Vm | undefined;
let ok = false;
try {
  if (!await waitFor(src, /PROBE READY|login|Linux version/, 30000)) {
    throw new Error("the source guest did not boot");
  }
  await sleep(1500);
  say("\n--- starting the destination (same command line plus -incoming) ---");
  dst = start("destination", ["-incoming", uri]);
  for (let i = 0; i < 300 && !exists(`${dir}/migrate.sock`); i++) await sleep(20);
  say(`\n--- migrating: ferry migrate --socket ${dir}/source.sock --uri ${uri} --watch ---`);
  const code = await runClient("migrate", [
    "--socket",
    `${dir}/source.sock`,
    "--uri",
    uri,
    "--watch",
    "--interval",
    "100",
    "--max-bandwidth",
    String(32 << 20),
    "--downtime-limit",
    "500",
  ]);
  if (code !== 0) throw new Error("the migration did not complete");
  say(`\n--- the guest now runs on the destination; watching its console for ${watchSeconds} s ---`);
  const from = dst.lines.length;
  await sleep(watchSeconds * 1000);
  const dq = await QmpClient.connect(`${dir}/destination.sock`);
  const sq = await QmpClient.connect(`${dir}/source.sock`);
  const dstStatus = (await dq.call("query-status") as { status: string }).status;
  const srcStatus = (await sq.call("query-status") as { status: string }).status;
  say(`\nsource: ${srcStatus}   destination: ${dstStatus}`);
  const after = dst.lines.slice(from);
  const verified = after.some((l) => /VERIFY ok|PROGRESS/.test(l)) && !after.some((l) => /FAIL/.test(l));
  ok = dstStatus === "running" && srcStatus === "postmigrate" &&
    (kernel.endsWith("probe.elf") ? verified : true);
  say(
    ok ? "demo: completed — the guest kept running, its memory verified on the destination" : "demo: FAILED",
  );
  await sq.execute("quit");
  await dq.execute("quit");
  await sq.close();
  await dq.close();
} catch (e) {
  say(`demo: FAILED: ${(e as Error).message}`);
} finally {
  for (const v of [src, dst]) {
    if (!v) continue;
    const t = setTimeout(() => {
      try {
        v.child.kill("SIGKILL");
      } catch { /* gone */ }
    }, 3000);
    await v.child.status;
    clearTimeout(t);
    await v.done;
  }
  Deno.removeSync(dir, { recursive: true });
}
Deno.exit(ok ? 0 : 1);
