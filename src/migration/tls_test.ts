import assert from "node:assert/strict";
import { describeTlsError, loadTlsCreds, sniffTls } from "./tls.ts";

Deno.test("sniffTls() recognises a TLS record and not a migration header", () => {
  assert.equal(sniffTls(new Uint8Array([0x16, 0x03, 0x01, 0x02, 0x00])), true); // ClientHello
  assert.equal(sniffTls(new Uint8Array([0x15, 0x03, 0x03, 0x00, 0x02])), true); // alert
  assert.equal(sniffTls(new TextEncoder().encode("FERRYMIG")), false);
  assert.equal(sniffTls(new Uint8Array([0x16])), false);
});

Deno.test("describeTlsError() names the cause", () => {
  assert.match(
    describeTlsError(new Error("received corrupt message of type InvalidContentType"), "destination"),
    /destination does not speak TLS/,
  );
  assert.match(
    describeTlsError(new Error("invalid peer certificate: UnknownIssuer"), "destination"),
    /not signed by this side's ca-cert.pem/,
  );
  assert.match(
    describeTlsError(new Error("invalid peer certificate: NotValidForName"), "destination"),
    /does not match the expected host name/,
  );
});

Deno.test("loadTlsCreds() names the object and the missing file; refuses verify-peer=off on a client", () => {
  const dir = Deno.makeTempDirSync();
  try {
    assert.throws(
      () => loadTlsCreds({ id: "tls0", dir, endpoint: "server", verifyPeer: true }),
      /Cannot load tls-creds-x509 'tls0': cannot read '.*server-cert.pem'/,
    );
    assert.throws(
      () => loadTlsCreds({ id: "tls0", dir, endpoint: "client", verifyPeer: false }),
      /verify-peer=off on a client/,
    );
    Deno.writeTextFileSync(`${dir}/ca-cert.pem`, "x");
    Deno.writeTextFileSync(`${dir}/client-cert.pem`, "x");
    assert.throws(
      () => loadTlsCreds({ id: "tls0", dir, endpoint: "client", verifyPeer: true }),
      /client-cert.pem but no client-key.pem/,
    );
    Deno.removeSync(`${dir}/client-cert.pem`);
    const c = loadTlsCreds({ id: "tls0", dir, endpoint: "client", verifyPeer: true });
    assert.equal(c.ca, "x");
    assert.equal(c.cert, undefined);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
