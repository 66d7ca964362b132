/**
 * Black box: the ferry process boots the probe guest on real KVM, reports its console, ends
 * cleanly on the guest's poweroff/reset/triple fault, and refuses bad command lines.
 */
import assert from "node:assert/strict";
import { Ferry, PROBE, probeArgs, tempDir } from "./_fixture/ferry.ts";

for (const smp of [1, 2]) {
  Deno.test(`ferry boots the probe guest with -smp ${smp} and every vCPU reports progress`, async () => {
    const f = new Ferry(probeArgs({ smp, append: "mode=idle interval_ms=50" }));
    try {
      const ready = await f.waitLine(/PROBE READY cpus=(\d+) .*native=(\d)/);
      assert.equal(Number(ready[1]), smp);
      assert.equal(ready[2], "1", "the guest runs natively on this host");
      for (let cpu = 0; cpu < smp; cpu++) {
        const a = Number((await f.waitLine(new RegExp(`PROBE PROGRESS cpu=${cpu} count=(\\d+)`)))[1]);
        const idx = f.lines.length;
        const b = Number(
          (await f.waitLine(new RegExp(`PROBE PROGRESS cpu=${cpu} count=(\\d+)`), 20000, idx))[1],
        );
        assert.ok(b > a, `cpu ${cpu} progress increases (${a} → ${b})`);
      }
    } finally {
      await f.kill();
    }
  });
}

const exits = [
  { how: "poweroff", code: 0, message: /powered off/ },
  { how: "reset", code: 0, message: /requested a reset/ },
  { how: "triplefault", code: 2, message: /triple fault/ },
];
for (const e of exits) {
  Deno.test(`ferry ends cleanly when the guest does exit=${e.how}`, async () => {
    const f = new Ferry(probeArgs({ append: `mode=pattern mib=4 rounds=3 exit=${e.how} interval_ms=20` }));
    const st = await f.wait(20000);
    assert.equal(st.code, e.code, f.transcript());
    assert.ok(f.lines.some((l) => l.includes(`PROBE EXIT ${e.how}`)), f.transcript());
    assert.ok(f.stderrLines.some((l) => e.message.test(l)), f.transcript());
  });
}

const bad: { args: string[]; error: RegExp }[] = [
  { args: ["-bogus"], error: /-bogus/ },
  { args: ["-m", "0", "-kernel", PROBE], error: /-m/ },
  { args: ["-smp", "0", "-kernel", PROBE], error: /-smp/ },
  { args: ["-machine", "virt", "-kernel", PROBE], error: /virt/ },
  { args: ["-kernel", "/nonexistent/vmlinux"], error: /nonexistent/ },
  { args: ["-kernel", "/etc/hostname"], error: /not an ELF64 x86_64 or bzImage/ },
  { args: ["-m"], error: /-m/ },
];
for (const b of bad) {
  Deno.test(`ferry refuses '${b.args.join(" ")}' with a one-line error`, async () => {
    const f = new Ferry(b.args);
    const st = await f.wait(15000);
    assert.notEqual(st.code, 0);
    const errs = f.stderrLines.filter((l) => l.trim() !== "");
    assert.equal(errs.length, 1, `one line:\n${errs.join("\n")}`);
    assert.match(errs[0]!, b.error);
    assert.match(errs[0]!, /^ferry: /);
  });
}

Deno.test("ferry -help lists the options", async () => {
  const f = new Ferry(["-help"]);
  const st = await f.wait();
  assert.equal(st.code, 0);
  const text = f.lines.join("\n");
  for (
    const opt of [
      "-machine",
      "-m",
      "-smp",
      "-kernel",
      "-append",
      "-initrd",
      "-serial",
      "-qmp",
      "-incoming",
      "-drive",
      "-device",
      "-netdev",
    ]
  ) {
    assert.ok(text.includes(opt), `help mentions ${opt}`);
  }
});

Deno.test("ferry writes the serial console to a file with -serial file,path=", async () => {
  const dir = tempDir();
  const path = `${dir}/console.log`;
  const args = probeArgs({ append: "mode=idle rounds=1 exit=poweroff interval_ms=20" }).map((a) =>
    a === "stdio" ? `file,path=${path}` : a
  );
  const f = new Ferry(args);
  const st = await f.wait();
  assert.equal(st.code, 0, f.transcript());
  const text = Deno.readTextFileSync(path);
  assert.match(text, /PROBE READY/);
  assert.ok(!f.lines.some((l) => l.includes("PROBE")), "nothing on stdout");
  Deno.removeSync(dir, { recursive: true });
});
