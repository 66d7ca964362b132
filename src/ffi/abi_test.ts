import assert from "node:assert/strict";
import { ABI } from "./abi.ts";
import { abiTable } from "./shim.ts";

Deno.test("ABI table in abi.ts matches the kernel header the shim was built against", () => {
  const native = abiTable();
  assert.ok(native.size >= Object.keys(ABI).length, `shim exports ${native.size} entries`);
  for (const [name, value] of Object.entries(ABI)) {
    assert.equal(
      value,
      native.get(name),
      `${name}: abi.ts says ${value}, linux/kvm.h says ${native.get(name)}`,
    );
  }
  for (const name of native.keys()) assert.ok(name in ABI, `abi.ts lacks ${name}`);
});
