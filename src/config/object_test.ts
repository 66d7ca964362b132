import assert from "node:assert/strict";
import { parseGlobal, parseObject } from "./object.ts";
import { parseArgs } from "./parse_args.ts";

Deno.test("parseObject() reads tls-creds-x509 with QEMU's defaults", () => {
  assert.deepEqual(parseObject("tls-creds-x509,id=tls0,dir=/etc/pki"), {
    type: "tls-creds-x509",
    id: "tls0",
    dir: "/etc/pki",
    endpoint: "client",
    verifyPeer: true,
  });
  assert.equal(parseObject("tls-creds-x509,id=t,dir=/d,endpoint=server,verify-peer=off").verifyPeer, false);
  assert.throws(() => parseObject("iothread,id=io0"), /object type 'iothread' is not supported yet/);
  assert.throws(() => parseObject("tls-creds-x509,id=t"), /missing 'dir'/);
  assert.throws(
    () => parseObject("tls-creds-x509,id=t,dir=/d,endpoint=both"),
    /'endpoint=both' is not server or client/,
  );
});

Deno.test("parseGlobal() takes migration.tls-creds and migration.tls-hostname only", () => {
  const g = {};
  parseGlobal("migration.tls-creds=tls0", g);
  parseGlobal("migration.tls-hostname=dst.example", g);
  assert.deepEqual(g, { "tls-creds": "tls0", "tls-hostname": "dst.example" });
  assert.throws(() => parseGlobal("pcie-root-port.fast-unplug=0", {}), /is not supported yet/);
});

Deno.test("parseArgs() takes -object, -global migration.tls-creds and -incoming defer", () => {
  const base = ["-kernel", "k", "-object", "tls-creds-x509,id=tls0,dir=/d,endpoint=server"];
  const c = parseArgs([...base, "-global", "migration.tls-creds=tls0", "-incoming", "defer"]);
  assert.equal(c.objects?.[0]?.id, "tls0");
  assert.deepEqual(c.migrationGlobals, { "tls-creds": "tls0" });
  assert.deepEqual(c.incoming, { kind: "defer" });
  assert.throws(
    () => parseArgs([...base, "-global", "migration.tls-creds=nope"]),
    /no -object has id 'nope'/,
  );
});
