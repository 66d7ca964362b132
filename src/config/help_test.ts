import assert from "node:assert/strict";
import { helpText } from "./help.ts";
import { OPTIONS } from "./parse_args.ts";

Deno.test("helpText lists every option with its form", () => {
  const text = helpText();
  for (const o of OPTIONS) {
    assert.match(text, new RegExp(`^  ${o.name.replace(/[-]/g, "\\-")}[ ,\\n]`, "m"), `${o.name} missing`);
    if (o.form) {
      assert.ok(text.includes(`${o.name} ${o.form}`) || text.includes(o.form), `${o.name} form missing`);
    }
  }
  for (
    const o of [
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
      "-chardev",
      "-mon",
      "-name",
      "-D",
      "-daemonize",
    ]
  ) {
    assert.ok(text.includes(`  ${o}`), o);
  }
});

Deno.test("helpText states the defaults", () => {
  const text = helpText();
  for (
    const d of [
      "Default q35,accel=kvm",
      "Default 256M",
      "128M..512G",
      "1..254",
      "Default 1",
      "Default none",
      "readonly=off,direct=on",
    ]
  ) {
    assert.ok(text.includes(d), d);
  }
  assert.ok(text.endsWith("\n"));
});
