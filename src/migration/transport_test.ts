import assert from "node:assert/strict";
import { connectMigration, MigrationListener, parseMigrationUri } from "./transport.ts";

Deno.test("parseMigrationUri reads tcp and unix uris", () => {
  assert.deepEqual(parseMigrationUri("tcp:127.0.0.1:4446"), {
    kind: "tcp",
    uri: "tcp:127.0.0.1:4446",
    host: "127.0.0.1",
    port: 4446,
  });
  assert.deepEqual(parseMigrationUri("tcp:[::1]:1"), {
    kind: "tcp",
    uri: "tcp:[::1]:1",
    host: "::1",
    port: 1,
  });
  assert.deepEqual(parseMigrationUri("unix:/tmp/m.sock"), {
    kind: "unix",
    uri: "unix:/tmp/m.sock",
    path: "/tmp/m.sock",
  });
  assert.equal(parseMigrationUri("tcp:0.0.0.0:0", { listen: true }).kind, "tcp");
});

Deno.test("parseMigrationUri rejects bad uris naming them", () => {
  for (
    const [uri, re] of [
      ["tcp:host", /'tcp:host': want tcp:HOST:PORT/],
      ["tcp::4446", /empty host/],
      ["tcp:h:99999", /port 99999 is outside 1..65535/],
      ["tcp:h:0", /port 0 is outside 1..65535/],
      ["tcp:h:x1", /bad port 'x1'/],
      ["tcp:::1:5", /IPv6 host as \[ADDR\]/],
      ["unix:", /'unix:': empty path/],
      ["exec:cat", /'exec:cat': want tcp:HOST:PORT or unix:PATH/],
    ] as const
  ) assert.throws(() => parseMigrationUri(uri), (e: Error) => e instanceof TypeError && re.test(e.message));
});

Deno.test("MigrationListener accepts one connection and removes its unix socket", async () => {
  const dir = Deno.makeTempDirSync();
  const target = parseMigrationUri(`unix:${dir}/s.sock`);
  const l = new MigrationListener(target);
  assert.throws(() => new MigrationListener(target), /Cannot listen on 'unix:.*s\.sock'/);
  const [server, client] = await Promise.all([l.acceptOne(), connectMigration(target)]);
  server.close();
  client.close();
  assert.throws(() => Deno.statSync(`${dir}/s.sock`), Deno.errors.NotFound);
  await assert.rejects(() => connectMigration(target), /Cannot connect to 'unix:.*': No such file/);
});
