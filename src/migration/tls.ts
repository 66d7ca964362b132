/**
 * TLS for the migration channel, with QEMU's interface: `-object tls-creds-x509,id=ID,dir=DIR,
 * endpoint=server|client,verify-peer=on|off` names a folder holding QEMU's file names
 * (`ca-cert.pem`, `server-cert.pem`, `server-key.pem`, `client-cert.pem`, `client-key.pem`), and
 * the `tls-creds` migration parameter picks it.
 *
 * What Deno 2.9's built-in TLS (rustls) can do, and so what is used:
 * - client (source): `Deno.connectTls` verifies the destination's chain against `ca-cert.pem` and
 *   its name against `tls-hostname` (default: the uri's host), and presents `client-cert.pem` when
 *   present. It cannot skip chain verification, so `verify-peer=off` on a client is refused.
 *   Because `connectTls` verifies the name it connects to, a `tls-hostname` other than the uri
 *   host goes through `node:tls` (`servername`), which Deno implements on the same rustls.
 * - server (destination): `Deno.listenTls` cannot ask for a client certificate, so
 *   `verify-peer=on` (QEMU's default) uses `node:tls`'s server with `requestCert`, which does: the
 *   source must present a certificate signed by `ca-cert.pem`. `verify-peer=off` uses
 *   `Deno.listenTls`.
 *
 * Plaintext against TLS fails at once with an error that says so: {@linkcode sniffTls} looks at the
 * first bytes a plain side receives, and TLS handshake errors are turned into sentences.
 *
 * `node:tls` loads only when one of those two cases runs: Deno's Node layer costs ~10 MiB of
 * resident memory and ~30 ms in a process that never needs it.
 * @module
 */
import type tls from "node:tls";
import type { Socket } from "node:net";
import { encodeMessage } from "./stream.ts";

/** One `-object tls-creds-x509` (plain data; files are read by {@linkcode loadTlsCreds}). */
export interface TlsCredsConfig {
  id: string;
  dir: string;
  endpoint: "server" | "client";
  verifyPeer: boolean;
}

/** Loaded credentials: the PEM texts a handshake needs. */
export interface TlsCreds extends TlsCredsConfig {
  ca?: string;
  cert?: string;
  key?: string;
}

function readPem(dir: string, name: string, id: string, required: boolean): string | undefined {
  const path = `${dir}/${name}`;
  try {
    return Deno.readTextFileSync(path);
  } catch (e) {
    if (!required && e instanceof Deno.errors.NotFound) return undefined;
    throw new TypeError(`Cannot load tls-creds-x509 '${id}': cannot read '${path}': ${(e as Error).message}`);
  }
}

/**
 * Reads the PEM files QEMU would read for `c`: a server needs `server-cert.pem`, `server-key.pem`
 * and, with `verify-peer=on`, `ca-cert.pem`; a client needs `ca-cert.pem` and takes
 * `client-cert.pem` + `client-key.pem` when both exist.
 * @throws {TypeError} naming the object and the missing file
 */
export function loadTlsCreds(c: TlsCredsConfig): TlsCreds {
  if (c.endpoint === "server") {
    const creds: TlsCreds = {
      ...c,
      cert: readPem(c.dir, "server-cert.pem", c.id, true)!,
      key: readPem(c.dir, "server-key.pem", c.id, true)!,
    };
    const ca = readPem(c.dir, "ca-cert.pem", c.id, c.verifyPeer);
    if (ca !== undefined) creds.ca = ca;
    return creds;
  }
  if (!c.verifyPeer) {
    throw new TypeError(
      `Cannot use tls-creds-x509 '${c.id}' with verify-peer=off on a client: Deno's TLS always verifies the destination's certificate`,
    );
  }
  const creds: TlsCreds = { ...c, ca: readPem(c.dir, "ca-cert.pem", c.id, true)! };
  const cert = readPem(c.dir, "client-cert.pem", c.id, false);
  const key = readPem(c.dir, "client-key.pem", c.id, false);
  if ((cert === undefined) !== (key === undefined)) {
    throw new TypeError(
      `Cannot load tls-creds-x509 '${c.id}': '${c.dir}' has ${
        cert ? "client-cert.pem but no client-key.pem" : "client-key.pem but no client-cert.pem"
      }`,
    );
  }
  if (cert !== undefined) creds.cert = cert;
  if (key !== undefined) creds.key = key;
  return creds;
}

/** What the peer spoke, from the first bytes a plaintext side received. */
export function sniffTls(first: Uint8Array): boolean {
  // A TLS record: content type 20..23 (handshake 22, alert 21), then version 3.x.
  return first.length >= 2 && first[0]! >= 20 && first[0]! <= 23 && first[1] === 3;
}

/** Turns a rustls/node handshake error into a sentence naming the likely cause. */
export function describeTlsError(e: Error, peer: "source" | "destination"): string {
  const m = e.message;
  if (/InvalidContentType|wrong version number|corrupt message|unexpected eof|Unexpected EOF/i.test(m)) {
    return `the ${peer} does not speak TLS (a plaintext migration ${
      peer === "source" ? "source" : "listener"
    }?): ${m}`;
  }
  if (/alert: (BadCertificate|UnknownCA|CertificateUnknown|DecryptError|AccessDenied)/i.test(m)) {
    return `the ${peer} refused this side's certificate (not signed by its ca-cert.pem?): ${m}`;
  }
  if (/no certificates|CertificateRequired/i.test(m)) {
    return `the ${peer === "source" ? "source" : "destination"} ${
      peer === "source" ? "presented no client certificate" : "requires a client certificate"
    } (verify-peer=on on the destination needs client-cert.pem and client-key.pem on the source): ${m}`;
  }
  if (/UnknownIssuer|BadSignature|unknown ca|UnknownCA|certificate verify failed|self.signed/i.test(m)) {
    return `the ${peer}'s certificate is not signed by this side's ca-cert.pem: ${m}`;
  }
  if (/NotValidForName|hostname|altnames|Host:/i.test(m)) {
    return `the ${peer}'s certificate does not match the expected host name (set tls-hostname?): ${m}`;
  }
  return `TLS handshake with the ${peer} failed: ${m}`;
}

/**
 * A `node:tls` socket seen as the reads and writes migration uses (`read(p)` fills `p` with what
 * arrived, `write(p)` resolves once the socket took `p`). Reading pauses the socket above a few
 * MiB of unread data.
 */
class NodeTlsConn {
  #socket: tls.TLSSocket;
  #chunks: Uint8Array[] = [];
  #queued = 0;
  #ended = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;
  #paused = false;

  constructor(socket: tls.TLSSocket) {
    this.#socket = socket;
    socket.on("data", (d: Uint8Array) => {
      this.#chunks.push(d);
      this.#queued += d.length;
      if (this.#queued > HIGH_WATER && !this.#paused) {
        this.#paused = true;
        socket.pause();
      }
      this.#notify();
    });
    socket.on("end", () => {
      this.#ended = true;
      this.#notify();
    });
    socket.on("close", () => {
      this.#ended = true;
      this.#notify();
    });
    socket.on("error", (e: Error) => {
      this.#error ??= e;
      this.#notify();
    });
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  async read(p: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      if (this.#error) throw this.#error;
      if (this.#ended) return null;
      await new Promise<void>((r) => (this.#wake = r));
    }
    let n = 0;
    while (n < p.length && this.#chunks.length > 0) {
      const c = this.#chunks[0]!;
      const take = Math.min(c.length, p.length - n);
      p.set(c.subarray(0, take), n);
      n += take;
      if (take === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(take);
    }
    this.#queued -= n;
    if (this.#paused && this.#queued < HIGH_WATER / 2) {
      this.#paused = false;
      this.#socket.resume();
    }
    return n;
  }

  write(p: Uint8Array): Promise<number> {
    if (this.#error) return Promise.reject(this.#error);
    return new Promise((resolve, reject) => {
      this.#socket.write(p, (e?: Error | null) => (e ? reject(e) : resolve(p.length)));
    });
  }

  closeWrite(): Promise<void> {
    this.#socket.end();
    return Promise.resolve();
  }

  close(): void {
    this.#socket.destroy();
  }

  setNoDelay(on = true): void {
    this.#socket.setNoDelay(on);
  }
}

/**
 * A Deno TLS connection whose read and write errors read as sentences: with TLS 1.3 the server
 * judges the client's certificate after the client's handshake finished, so a refusal arrives as
 * an alert on the first read.
 */
class TlsErrorConn {
  #conn: Deno.TlsConn;
  #peer: "source" | "destination";

  constructor(conn: Deno.TlsConn, peer: "source" | "destination") {
    this.#conn = conn;
    this.#peer = peer;
  }

  read(p: Uint8Array): Promise<number | null> {
    return this.#conn.read(p).catch((e) => this.#fail(e));
  }

  write(p: Uint8Array): Promise<number> {
    return this.#conn.write(p).catch((e) => this.#fail(e));
  }

  #fail(e: Error): never {
    if (/alert|certificate|close_notify|corrupt/i.test(e.message)) {
      throw new Error(describeTlsError(e, this.#peer), { cause: e });
    }
    throw e;
  }

  closeWrite(): Promise<void> {
    return this.#conn.closeWrite();
  }

  close(): void {
    this.#conn.close();
  }
}

/** Unread bytes above which a node TLS socket is paused. */
const HIGH_WATER = 8 * 1024 * 1024;

/**
 * The connection type migration uses. A node socket implements only what migration calls (read,
 * write, close, closeWrite); the cast keeps the transport's `Deno.Conn` signature.
 */
function asConn(c: NodeTlsConn): Deno.Conn {
  return c as unknown as Deno.Conn;
}

/**
 * Opens a TLS connection to a destination (the source side).
 * @param host the uri's host; @param port its port
 * @param hostname the name the destination's certificate must carry (`tls-hostname`, default `host`)
 * @throws {Error} with a sentence from {@linkcode describeTlsError}
 */
export async function connectTlsMigration(
  host: string,
  port: number,
  creds: TlsCreds,
  hostname: string,
): Promise<Deno.Conn> {
  if (creds.endpoint !== "client") {
    throw new TypeError(`Cannot migrate with tls-creds '${creds.id}': its endpoint is server, want client`);
  }
  try {
    if (hostname === host) {
      const conn = await Deno.connectTls({
        hostname: host,
        port,
        caCerts: [creds.ca!],
        ...(creds.cert !== undefined ? { cert: creds.cert, key: creds.key! } : {}),
      });
      await conn.handshake();
      return new TlsErrorConn(conn, "destination") as unknown as Deno.Conn;
    }
    const { connect } = await import("node:tls");
    const socket = connect({
      host,
      port,
      servername: hostname,
      ca: creds.ca!,
      ...(creds.cert !== undefined ? { cert: creds.cert, key: creds.key! } : {}),
    });
    await new Promise<void>((resolve, reject) => {
      socket.once("secureConnect", () => resolve());
      socket.once("error", reject);
    });
    const c = new NodeTlsConn(socket);
    c.setNoDelay(true);
    return asConn(c);
  } catch (e) {
    throw new Error(describeTlsError(e as Error, "destination"), { cause: e });
  }
}

/** A TLS listener that hands out connections whose handshake completed. */
export interface TlsMigrationListener {
  readonly addr: Deno.Addr;
  /** The next connection after a good handshake; rejects when the handshake fails. */
  accept(): Promise<Deno.Conn>;
  close(): void;
}

/**
 * Listens for TLS migrations (the destination side).
 * @throws {TypeError} for client credentials
 */
export async function listenTlsMigration(
  host: string,
  port: number,
  creds: TlsCreds,
): Promise<TlsMigrationListener> {
  if (creds.endpoint !== "server") {
    throw new TypeError(
      `Cannot receive a migration with tls-creds '${creds.id}': its endpoint is client, want server`,
    );
  }
  if (!creds.verifyPeer) {
    const l = Deno.listenTls({ hostname: host, port, cert: creds.cert!, key: creds.key! });
    return {
      addr: l.addr,
      async accept() {
        const conn = await l.accept();
        try {
          await conn.handshake();
        } catch (e) {
          conn.close();
          throw new Error(describeTlsError(e as Error, "source"), { cause: e });
        }
        return conn;
      },
      close: () => l.close(),
    };
  }
  const waiting: { resolve: (c: Deno.Conn) => void; reject: (e: Error) => void }[] = [];
  const ready: (Deno.Conn | Error)[] = [];
  const hand = (x: Deno.Conn | Error) => {
    const w = waiting.shift();
    if (!w) return void ready.push(x);
    if (x instanceof Error) w.reject(x);
    else w.resolve(x);
  };
  // rejectUnauthorized=false so that the reason is known here (node then reports it in
  // `authorizationError`); an unauthorized socket never reaches migration: it gets a `nack` with
  // the reason and is closed.
  const { createServer } = await import("node:tls");
  const server = createServer({
    cert: creds.cert!,
    key: creds.key!,
    ca: creds.ca!,
    requestCert: true,
    rejectUnauthorized: false,
  }, (socket: tls.TLSSocket) => {
    if (!socket.authorized) {
      const peer = socket.getPeerCertificate();
      const none = !peer || Object.keys(peer).length === 0;
      const why = none
        ? "the source presented no client certificate (verify-peer=on on the destination needs client-cert.pem and client-key.pem on the source)"
        : `the source's certificate is not signed by this side's ca-cert.pem (${
          String(socket.authorizationError)
        })`;
      const reason = new TextEncoder().encode(`TLS: ${why}`);
      socket.end(encodeMessage("nack", reason));
      setTimeout(() => socket.destroy(), 500);
      return hand(new Error(why));
    }
    const c = new NodeTlsConn(socket);
    c.setNoDelay(true);
    hand(asConn(c));
  });
  server.on("tlsClientError", (e: Error, socket: Socket) => {
    socket.destroy();
    hand(new Error(describeTlsError(e, "source"), { cause: e }));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const a = server.address() as { address: string; port: number };
  let closed = false;
  return {
    addr: { transport: "tcp", hostname: a.address, port: a.port },
    accept() {
      const x = ready.shift();
      if (x) return x instanceof Error ? Promise.reject(x) : Promise.resolve(x);
      if (closed) return Promise.reject(new Error("the listener is closed"));
      return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
    },
    close() {
      if (closed) return;
      closed = true;
      server.close();
      for (const w of waiting.splice(0)) w.reject(new Error("the listener is closed"));
    },
  };
}
