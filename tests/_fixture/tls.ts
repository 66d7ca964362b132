/**
 * Certificates for TLS migration tests, made with Debian's `openssl` in QEMU's folder layout
 * (`ca-cert.pem`, `server-cert.pem`, `server-key.pem`, `client-cert.pem`, `client-key.pem`).
 * @module
 */

/** Credential folders under one temp dir. */
export interface TlsDirs {
  /** Destination: ca-cert.pem + server cert/key (SAN localhost, 127.0.0.1). */
  server: string;
  /** Source: ca-cert.pem + client cert/key. */
  client: string;
  /** Source: ca-cert.pem only (no client certificate). */
  clientNoCert: string;
  /** Destination whose server certificate comes from another CA (ca-cert.pem is the good CA). */
  wrongServer: string;
  /** Source whose client certificate comes from another CA (ca-cert.pem is the good CA). */
  wrongClient: string;
}

async function openssl(cwd: string, ...args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", { args, cwd, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) throw new Error(`openssl ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
}

async function ca(work: string, name: string): Promise<void> {
  await openssl(
    work,
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    `${name}-key.pem`,
    "-out",
    `${name}-cert.pem`,
    "-days",
    "2",
    "-subj",
    `/CN=${name}`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  );
}

/** Issues `out`-cert.pem / `out`-key.pem signed by CA `by` with the v3 extensions in `ext`. */
async function issue(work: string, by: string, out: string, cn: string, ext: string): Promise<void> {
  Deno.writeTextFileSync(`${work}/${out}.ext`, ext);
  await openssl(
    work,
    "req",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    `${out}-key.pem`,
    "-out",
    `${out}.csr`,
    "-subj",
    `/CN=${cn}`,
  );
  await openssl(
    work,
    "x509",
    "-req",
    "-in",
    `${out}.csr`,
    "-CA",
    `${by}-cert.pem`,
    "-CAkey",
    `${by}-key.pem`,
    "-CAcreateserial",
    "-out",
    `${out}-cert.pem`,
    "-days",
    "2",
    "-extfile",
    `${out}.ext`,
  );
}

const SERVER_EXT = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n" +
  "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n";
const CLIENT_EXT =
  "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n";

/** Makes a CA, a wrong CA, and server/client certificates of both, in QEMU's layout under `dir`. */
export async function makeTlsDirs(dir: string): Promise<TlsDirs> {
  const work = `${dir}/pki`;
  Deno.mkdirSync(work, { recursive: true });
  await ca(work, "ca");
  await ca(work, "wrongca");
  await issue(work, "ca", "server", "localhost", SERVER_EXT);
  await issue(work, "ca", "client", "ferry-source", CLIENT_EXT);
  await issue(work, "wrongca", "wserver", "localhost", SERVER_EXT);
  await issue(work, "wrongca", "wclient", "ferry-source", CLIENT_EXT);
  const folder = (name: string, files: Record<string, string>) => {
    const d = `${dir}/${name}`;
    Deno.mkdirSync(d, { recursive: true });
    for (const [to, from] of Object.entries(files)) Deno.copyFileSync(`${work}/${from}`, `${d}/${to}`);
    return d;
  };
  return {
    server: folder("server", {
      "ca-cert.pem": "ca-cert.pem",
      "server-cert.pem": "server-cert.pem",
      "server-key.pem": "server-key.pem",
    }),
    client: folder("client", {
      "ca-cert.pem": "ca-cert.pem",
      "client-cert.pem": "client-cert.pem",
      "client-key.pem": "client-key.pem",
    }),
    clientNoCert: folder("client-nocert", { "ca-cert.pem": "ca-cert.pem" }),
    wrongServer: folder("wrong-server", {
      "ca-cert.pem": "ca-cert.pem",
      "server-cert.pem": "wserver-cert.pem",
      "server-key.pem": "wserver-key.pem",
    }),
    wrongClient: folder("wrong-client", {
      "ca-cert.pem": "ca-cert.pem",
      "client-cert.pem": "wclient-cert.pem",
      "client-key.pem": "wclient-key.pem",
    }),
  };
}
