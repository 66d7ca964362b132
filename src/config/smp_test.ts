import assert from "node:assert/strict";
import { parseSmp } from "./smp.ts";
import { assertConfigError } from "./_testing.ts";

Deno.test("parseSmp reads a count and a topology that is 1 socket x N cores x 1 thread", () => {
  assert.equal(parseSmp("1"), 1);
  assert.equal(parseSmp("2"), 2);
  assert.equal(parseSmp("cpus=4"), 4);
  assert.equal(parseSmp("254"), 254);
  assert.equal(parseSmp("4,maxcpus=4,sockets=1,dies=1,clusters=1,cores=4,threads=1"), 4);
  assert.equal(parseSmp("4,cores=4"), 4);
  assert.equal(parseSmp("4,sockets=1"), 4);
});

Deno.test("parseSmp refuses counts outside 1..254", () => {
  assertConfigError(
    () => parseSmp("0"),
    RangeError,
    "-smp",
    "Cannot use -smp '0': vCPU count must be 1..254",
  );
  assertConfigError(() => parseSmp("255"), RangeError, "-smp", /1..254/);
  assertConfigError(() => parseSmp("two"), SyntaxError, "-smp", /not a decimal number/);
});

Deno.test("parseSmp refuses an inconsistent topology, hotplug and other topologies", () => {
  assertConfigError(
    () => parseSmp("4,maxcpus=4,sockets=2,cores=3,threads=1"),
    RangeError,
    "-smp",
    /must equal maxcpus/,
  );
  assertConfigError(() => parseSmp("4,maxcpus=2"), RangeError, "-smp", /maxcpus 2 must be 4..254/);
  assertConfigError(() => parseSmp("2,maxcpus=4"), TypeError, "-smp", /CPU hotplug\) is not supported yet/);
  assertConfigError(
    () => parseSmp("4,sockets=2,cores=2,threads=1"),
    TypeError,
    "-smp",
    /topology .* is not supported yet/,
  );
  assertConfigError(() => parseSmp("4,books=1"), TypeError, "-smp", /unknown key 'books'/);
});
