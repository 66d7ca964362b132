import assert from "node:assert/strict";
import { parseAccel, parseCpu, parseMachine } from "./machine.ts";
import { assertConfigError } from "./_testing.ts";

Deno.test("parseMachine accepts q35 in StratoVirt's and QEMU's spellings", () => {
  for (
    const t of [
      "q35",
      "Q35",
      "type=q35",
      "q35,accel=kvm",
      "q35,dump-guest-core=on,mem-share=off,usb=off",
      "q35,dump_guest_core=on",
    ]
  ) {
    assert.deepEqual(parseMachine(t), { type: "q35", accel: "kvm" });
  }
});

Deno.test("parseMachine refuses any type other than q35", () => {
  assertConfigError(
    () => parseMachine("virt"),
    TypeError,
    "virt",
    "Machine type 'virt' is not supported: ferry emulates x86_64 q35 only (use -machine q35)",
  );
  for (const t of ["microvm", "none", "pc", "pc-q35-8.2"]) {
    assertConfigError(() => parseMachine(t), TypeError, t, /q35 only/);
  }
});

Deno.test("parseMachine refuses other accelerators and unsupported settings", () => {
  assertConfigError(
    () => parseMachine("q35,accel=tcg"),
    TypeError,
    "-machine",
    /accelerator 'tcg' is not supported/,
  );
  assertConfigError(
    () => parseMachine("q35,mem-share=on"),
    TypeError,
    "-machine",
    /mem-share=on .* is not supported yet/,
  );
  assertConfigError(
    () => parseMachine("q35,dump-guest-core=off"),
    TypeError,
    "-machine",
    /not supported yet/,
  );
  assertConfigError(() => parseMachine("q35,usb=on"), TypeError, "-machine", /usb=on is not supported yet/);
  assertConfigError(() => parseMachine("q35,smm=off"), TypeError, "-machine", /unknown key 'smm'/);
});

Deno.test("parseAccel and parseCpu take kvm and host only", () => {
  assert.equal(parseAccel("kvm"), "kvm");
  assertConfigError(() => parseAccel("tcg"), TypeError, "-accel", /KVM only/);
  parseCpu("host");
  parseCpu("host,pmu=off,sve=off");
  assertConfigError(() => parseCpu("qemu64"), TypeError, "-cpu", /'qemu64' is not supported/);
  assertConfigError(() => parseCpu("host,pmu=on"), TypeError, "-cpu", /pmu=on is not supported yet/);
});
