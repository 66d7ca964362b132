/**
 * `-chardev` (StratoVirt `chardev.rs`: `ChardevType` stdio, pty, socket, file). A chardev is only a
 * named backend: `-serial chardev:ID` uses a stdio or file one, `-mon chardev=ID,mode=control` a
 * UNIX socket one. ferry refuses pty and TCP socket chardevs (not supported yet), and a chardev
 * nothing uses (QEMU would open it; ferry would silently not).
 * @module
 */
import { type OptionInfo, OptionList, readId } from "./_kv.ts";

/** `-chardev`. */
export const CHARDEV_OPTION: OptionInfo = {
  name: "-chardev",
  arity: "many",
  repeat: true,
  form: "stdio,id=ID | file,id=ID,path=PATH | socket,id=ID,path=PATH,server[,nowait]",
  help: "named backend for -serial chardev:ID (stdio, file) or -mon chardev=ID (socket)",
  status: "supported",
};

/** A parsed `-chardev`. */
export type Chardev =
  | { kind: "stdio"; id: string }
  | { kind: "file"; id: string; path: string }
  /** A UNIX socket; `wait` defaults to true when `server` is on (QEMU). */
  | { kind: "socket"; id: string; path: string; server: boolean; wait: boolean };

/** `sockaddr_un.sun_path` holds 108 bytes with the NUL (StratoVirt `MAX_SOCK_PATH_LENGTH`). */
export const MAX_SOCKET_PATH_BYTES = 107;

/**
 * Checks a UNIX socket path's length.
 * @throws {RangeError} when longer than 107 bytes
 */
export function checkSocketPath(option: string, path: string): string {
  if (new TextEncoder().encode(path).length > MAX_SOCKET_PATH_BYTES) {
    throw new RangeError(
      `Cannot use ${option} socket '${path}': path longer than ${MAX_SOCKET_PATH_BYTES} bytes`,
    );
  }
  if (path.includes("\0")) throw new TypeError(`Cannot use ${option} socket path with a NUL byte`);
  return path;
}

/**
 * Parses `-chardev`.
 * @param text e.g. `socket,id=qmp0,path=/run/qmp.sock,server,nowait`
 * @throws {TypeError} on an unknown or unsupported backend, unknown key or missing id/path
 */
export function parseChardev(text: string): Chardev {
  const list = new OptionList("-chardev", text, { implied: "backend", form: CHARDEV_OPTION.form });
  const backend = list.required("backend");
  switch (backend) {
    case "stdio":
      list.only(["backend", "id"]);
      return { kind: "stdio", id: readId(list) };
    case "file":
      list.only(["backend", "id", "path"]);
      return { kind: "file", id: readId(list), path: list.required("path") };
    case "socket": {
      list.only(["backend", "id", "path", "host", "port", "server", "wait"]);
      const id = readId(list);
      if (list.has("port") || list.has("host")) throw list.unsupported("a TCP socket chardev");
      const path = checkSocketPath("-chardev", list.required("path"));
      const server = list.bool("server", false);
      const wait = list.bool("wait", true);
      if (!server && (list.has("wait") || list.has("nowait"))) {
        throw list.invalid("'wait' applies only with 'server'");
      }
      return { kind: "socket", id, path, server, wait: server && wait };
    }
    case "pty":
      throw list.unsupported("a pty chardev");
    default:
      throw list.invalid(`unknown backend '${backend}'`);
  }
}
