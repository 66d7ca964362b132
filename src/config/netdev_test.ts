import assert from "node:assert/strict";
import { parseNetdev } from "./netdev.ts";
import { assertConfigError } from "./_testing.ts";

Deno.test("parseNetdev reads a tap by ifname or fd", () => {
  assert.deepEqual(parseNetdev("tap,id=net0,ifname=tap0"), { kind: "tap", id: "net0", ifname: "tap0" });
  assert.deepEqual(parseNetdev("tap,id=net0,fd=35"), { kind: "tap", id: "net0", fd: 35 });
  assert.deepEqual(parseNetdev("type=tap,id=n,ifname=t,queues=1,vhost=off,script=no,downscript=no"), {
    kind: "tap",
    id: "n",
    ifname: "t",
  });
});

Deno.test("parseNetdev refuses other types, unknown keys and a tap without ifname or fd", () => {
  assertConfigError(
    () => parseNetdev("user,id=n"),
    TypeError,
    "-netdev",
    /netdev type 'user' is not supported: ferry has tap/,
  );
  assertConfigError(() => parseNetdev("tap,id=n,ifname=t,br=br0"), TypeError, "-netdev", /unknown key 'br'/);
  assertConfigError(() => parseNetdev("tap,id=n"), TypeError, "-netdev", /missing 'ifname' or 'fd'/);
  assertConfigError(() => parseNetdev("tap,ifname=t"), TypeError, "-netdev", /missing 'id'/);
  assertConfigError(
    () => parseNetdev("tap,id=n,ifname=tap-name-too-long0"),
    RangeError,
    "-netdev",
    /longer than 15 bytes/,
  );
  assertConfigError(() => parseNetdev("tap,id=n,fd=x"), SyntaxError, "-netdev", /not a decimal number/);
});

Deno.test("parseNetdev refuses vhost, vhost-user and multiqueue as not supported yet", () => {
  for (
    const t of [
      "tap,id=n,ifname=t,vhost=on",
      "vhost-user,id=n,chardev=c",
      "tap,id=n,ifname=t,queues=4",
      "tap,id=n,fds=3:4",
      "tap,id=n,ifname=t,script=/etc/qemu-ifup",
    ]
  ) {
    assertConfigError(() => parseNetdev(t), TypeError, "-netdev", /is not supported yet/);
  }
  assertConfigError(
    () => parseNetdev("tap,id=n,ifname=t,vhostfd=4"),
    TypeError,
    "-netdev",
    /vhostfd needs vhost=on/,
  );
});
