import assert from "node:assert/strict";
import {
  findAcceptedUnix,
  findConnectedUnix,
  newSocketFds,
  sendBufferBytes as sendBuffer,
  socketFds,
  unixSocketPath,
} from "./socket_fd.ts";
import { connectMigration, MigrationListener, parseMigrationUri } from "./transport.ts";

Deno.test("findConnectedUnix and findAcceptedUnix tell a unix connection's two ends apart from other sockets", async () => {
  const dir = Deno.makeTempDirSync();
  const path = `${dir}/m.sock`;
  const other = Deno.listen({ transport: "unix", path: `${dir}/other.sock` });
  const l = Deno.listen({ transport: "unix", path });
  try {
    const before = socketFds();
    const [c, a] = await Promise.all([Deno.connect({ transport: "unix", path }), l.accept()]);
    const stray = await Deno.connect({ transport: "unix", path: `${dir}/other.sock` });
    const strayAccepted = await other.accept();
    assert.equal(findConnectedUnix(socketFds()), undefined, "nothing is new against a snapshot taken now");
    const accepted = findAcceptedUnix(before, path);
    assert.ok(accepted !== undefined);
    assert.equal(unixSocketPath(accepted, false), path);
    assert.equal(unixSocketPath(accepted, true), "");
    // Two connections out since `before` (to m.sock and other.sock): ambiguous, so none.
    assert.equal(findConnectedUnix(before), undefined);
    stray.close();
    strayAccepted.close();
    const out = findConnectedUnix(before);
    assert.ok(out !== undefined);
    assert.equal(unixSocketPath(out, true), path);
    assert.notEqual(out, accepted);
    c.close();
    a.close();
  } finally {
    l.close();
    other.close();
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a unix migration connection gets a larger send buffer at both ends; tcp keeps autotuning", async () => {
  const dir = Deno.makeTempDirSync();
  const target = parseMigrationUri(`unix:${dir}/mig.sock`, { listen: true });
  const wmemMax = Number(Deno.readTextFileSync("/proc/sys/net/core/wmem_max"));
  const wmemDefault = Number(Deno.readTextFileSync("/proc/sys/net/core/wmem_default"));
  try {
    if (target.kind !== "unix") throw new Error("unreachable");
    const listener = await MigrationListener.open(target);
    const before = socketFds();
    const [src, dst] = await Promise.all([connectMigration(target), listener.acceptOne()]);
    const fds = newSocketFds(before);
    assert.equal(fds.length, 2);
    for (const fd of fds) {
      // Linux reports twice what was granted; granted is min(4 MiB, wmem_max).
      assert.equal(sendBuffer(fd), 2 * Math.min(4 * 1024 * 1024, wmemMax));
      assert.ok(sendBuffer(fd) > 2 * wmemDefault || wmemMax <= wmemDefault);
    }
    src.close();
    dst.close();

    const tcp = parseMigrationUri("tcp:127.0.0.1:0", { listen: true });
    if (tcp.kind !== "tcp") throw new Error("unreachable");
    const tl = await MigrationListener.open(tcp);
    const port = (tl.addr as Deno.NetAddr).port;
    const before2 = socketFds();
    const [ts, td] = await Promise.all([
      connectMigration({ kind: "tcp", uri: `tcp:127.0.0.1:${port}`, host: "127.0.0.1", port }),
      tl.acceptOne(),
    ]);
    const tfds = newSocketFds(before2);
    assert.equal(tfds.length, 2);
    for (const fd of tfds) assert.ok(sendBuffer(fd) < 2 * Math.min(4 * 1024 * 1024, wmemMax));
    ts.close();
    td.close();
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
