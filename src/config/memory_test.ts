import assert from "node:assert/strict";
import { formatSize, parseMemory, parseSize } from "./memory.ts";
import { assertConfigError } from "./_testing.ts";

const M = 1024 * 1024;
const G = 1024 * M;

Deno.test("parseMemory reads StratoVirt sizes with M as the default unit", () => {
  assert.equal(parseMemory("2G"), 2 * G);
  assert.equal(parseMemory("2g"), 2 * G);
  assert.equal(parseMemory("256"), 256 * M);
  assert.equal(parseMemory("512m"), 512 * M);
  assert.equal(parseMemory("131072K"), 128 * M);
  assert.equal(parseMemory("size=1G"), G);
  assert.equal(parseMemory("1G,maxmem=1G"), G);
  assert.equal(parseMemory("128M"), 128 * M);
  assert.equal(parseMemory("512G"), 512 * G);
});

Deno.test("parseMemory refuses sizes outside 128M..512G", () => {
  assertConfigError(
    () => parseMemory("0"),
    RangeError,
    "-m",
    "Cannot use -m '0': memory size must be 128M..512G",
  );
  assertConfigError(() => parseMemory("127M"), RangeError, "-m", /128M..512G/);
  assertConfigError(() => parseMemory("513G"), RangeError, "-m", /128M..512G/);
});

Deno.test("parseMemory refuses a malformed size naming the accepted form", () => {
  assertConfigError(
    () => parseMemory("5X"),
    SyntaxError,
    "-m",
    "Cannot parse -m '5X': '5X' is not a size; expected -m [size=]N[K|M|G][,maxmem=N[K|M|G]]",
  );
  for (const bad of ["1.5G", "-1", "G", "2GB", "0x100"]) {
    assertConfigError(() => parseMemory(bad), SyntaxError, "-m");
  }
  assertConfigError(() => parseMemory("1G,slots=2"), TypeError, "-m", /unknown key 'slots'/);
});

Deno.test("parseMemory refuses a size that is not whole pages and memory hotplug", () => {
  assertConfigError(() => parseMemory("131073K"), RangeError, "-m", /multiple of 4K/);
  assertConfigError(
    () => parseMemory("1G,maxmem=2G"),
    TypeError,
    "-m",
    /maxmem above size \(memory hotplug\) is not supported yet/,
  );
  assertConfigError(() => parseMemory("2G,maxmem=1G"), RangeError, "-m", /below size/);
});

Deno.test("parseSize and formatSize agree", () => {
  for (const s of ["1G", "300M", "4K", "1025M"]) assert.equal(formatSize(parseSize(s) as number), s);
  assert.equal(formatSize(2048 * M), "2G");
});
