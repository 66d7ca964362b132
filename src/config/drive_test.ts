import assert from "node:assert/strict";
import { parseDrive } from "./drive.ts";
import { assertConfigError } from "./_testing.ts";

Deno.test("parseDrive reads a drive with StratoVirt's defaults readonly=off, direct=on", () => {
  assert.deepEqual(parseDrive("file=rootfs.img,id=rootfs"), {
    id: "rootfs",
    file: "rootfs.img",
    readonly: false,
    direct: true,
  });
  assert.deepEqual(parseDrive("file=rootfs.img,id=rootfs,readonly=off,direct=off"), {
    id: "rootfs",
    file: "rootfs.img",
    readonly: false,
    direct: false,
  });
  assert.deepEqual(
    parseDrive(
      "id=d,file=a,,b.img,readonly=on,format=raw,aio=io_uring,serial=SN1,if=none,media=disk,discard=ignore,detect-zeroes=off",
    ),
    {
      id: "d",
      file: "a,b.img",
      readonly: true,
      direct: true,
      serial: "SN1",
    },
  );
  assert.equal(parseDrive("id=d,file=f,readonly").readonly, true);
});

Deno.test("parseDrive refuses unknown keys and missing id or file", () => {
  assertConfigError(() => parseDrive("id=d,file=f,cache=none"), TypeError, "-drive", /unknown key 'cache'/);
  assertConfigError(() => parseDrive("file=f"), TypeError, "-drive", /missing 'id'/);
  assertConfigError(() => parseDrive("id=d"), TypeError, "-drive", /missing 'file'/);
  assertConfigError(() => parseDrive("id=d,file=f,readonly=maybe"), SyntaxError, "-drive", /not on or off/);
});

Deno.test("parseDrive refuses later features as not supported yet", () => {
  for (
    const extra of [
      "if=pflash,unit=0",
      "format=qcow2",
      "media=cdrom",
      "discard=unmap",
      "detect-zeroes=on",
      "throttling.iops-total=200",
    ]
  ) {
    assertConfigError(() => parseDrive(`id=d,file=f,${extra}`), TypeError, "-drive", /is not supported yet/);
  }
});

Deno.test("parseDrive refuses StratoVirt's bad aio/direct pairs and a long serial", () => {
  assertConfigError(
    () => parseDrive("id=d,file=f,direct=off,aio=native"),
    TypeError,
    "-drive",
    /aio=native needs direct=on/,
  );
  assertConfigError(() => parseDrive("id=d,file=f,aio=off"), TypeError, "-drive", /direct=on needs aio/);
  assertConfigError(() => parseDrive("id=d,file=f,aio=threads"), TypeError, "-drive", /aio=threads/);
  assertConfigError(
    () => parseDrive(`id=d,file=f,serial=${"s".repeat(21)}`),
    RangeError,
    "-drive",
    /longer than 20 bytes/,
  );
  assertConfigError(() => parseDrive("id=d,file=f,format=vmdk"), TypeError, "-drive", /format=vmdk/);
});
