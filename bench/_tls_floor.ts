/**
 * The floor Deno's own TLS puts under a TLS migration on this host: MiB per CPU second of a
 * loopback transfer in this process (no ferry code), plaintext and TLS (`Deno.listenTls` /
 * `Deno.connectTls`, rustls, TLS 1.3), 4 MiB writes and reads, CPU from /proc/self/stat.
 * @module
 */
import { cpuSeconds, median } from "./_util.ts";

const MIB = 1024 * 1024;
const TOTAL_BYTES = 256 * MIB;
const CHUNK_BYTES = 4 * MIB;

/** One transfer of {@linkcode TOTAL_BYTES} over 127.0.0.1; returns MiB per CPU second. */
async function once(tls: { cert: string; key: string; ca: string } | undefined): Promise<number> {
  const listener = tls
    ? Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert: tls.cert, key: tls.key })
    : Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const cpu0 = cpuSeconds("self");
  const receive = (async () => {
    const c = await listener.accept();
    const b = new Uint8Array(CHUNK_BYTES);
    let got = 0;
    while (got < TOTAL_BYTES) {
      const n = await c.read(b);
      if (n === null) break;
      got += n;
    }
    c.close();
    return got;
  })();
  const conn = tls
    ? await Deno.connectTls({ hostname: "localhost", port, caCerts: [tls.ca] })
    : await Deno.connect({ hostname: "127.0.0.1", port });
  const w = new Uint8Array(CHUNK_BYTES).map((_, i) => (i * 7) & 255);
  for (let sent = 0; sent < TOTAL_BYTES; sent += CHUNK_BYTES) {
    for (let o = 0; o < w.length;) o += await conn.write(w.subarray(o));
  }
  const got = await receive;
  conn.close();
  listener.close();
  if (got !== TOTAL_BYTES) throw new Error(`TLS floor: received ${got} of ${TOTAL_BYTES} bytes`);
  return got / MIB / (cpuSeconds("self") - cpu0);
}

/**
 * Medians of `runs` plaintext and TLS transfers (MiB per CPU second), with the server certificate
 * and key from `serverDir` (QEMU's file names) and its CA.
 */
export async function denoTlsFloor(serverDir: string, runs = 3): Promise<{ plain: number; tls: number }> {
  const read = (f: string) => Deno.readTextFileSync(`${serverDir}/${f}`);
  const creds = { cert: read("server-cert.pem"), key: read("server-key.pem"), ca: read("ca-cert.pem") };
  const plain: number[] = [], tls: number[] = [];
  for (let i = 0; i < runs; i++) {
    plain.push(await once(undefined));
    tls.push(await once(creds));
  }
  return { plain: median(plain), tls: median(tls) };
}
