/**
 * QMP listeners: `-qmp unix:PATH,server[,nowait]` and `-chardev socket,id=X,path=P,server[,nowait]`
 * + `-mon chardev=X,mode=control` (StratoVirt `cmdline.rs`: `QmpConfig`, `MonConfig`,
 * `check_api_channel`; QEMU's `server=on`/`wait=off` spellings too).
 *
 * Differences from StratoVirt, all toward QEMU: StratoVirt insists on both `server` and `nowait`
 * and on one QMP channel; ferry requires `server` (it only listens), lets `wait` default to true
 * (wait for a client before starting the guest, as QEMU), allows several `-qmp`/`-mon`, and runs
 * without any (StratoVirt refuses to start without a QMP socket). TCP listeners and client mode
 * are not supported yet.
 * @module
 */
import { type OptionInfo, OptionList } from "./_kv.ts";
import { type Chardev, checkSocketPath } from "./chardev.ts";
import type { QmpConfig } from "./machine_config.ts";

/** `-qmp`. */
export const QMP_OPTION: OptionInfo = {
  name: "-qmp",
  arity: "one",
  repeat: true,
  form: "unix:PATH,server[,nowait] | unix:PATH,server=on[,wait=off]",
  help: "QMP on a UNIX socket; without nowait/wait=off the guest starts after a client connects",
  status: "supported",
};

/** `-mon`. */
export const MON_OPTION: OptionInfo = {
  name: "-mon",
  arity: "one",
  repeat: true,
  form: "chardev=ID,mode=control[,id=NAME]",
  help: "QMP on the socket -chardev with id ID",
  status: "supported",
};

function readServerWait(list: OptionList): QmpConfig["wait"] {
  if (!list.bool("server", false)) {
    throw list.unsupported("QMP without 'server' (client mode)");
  }
  return list.bool("wait", true);
}

/**
 * Parses `-qmp`.
 * @throws {TypeError} on a TCP address, client mode or an unknown key; {RangeError} on a socket
 * path longer than 107 bytes
 */
export function parseQmp(text: string): QmpConfig {
  const list = new OptionList("-qmp", text, { implied: "uri", impliedRaw: true, form: QMP_OPTION.form });
  list.only(["uri", "server", "wait"]);
  const uri = list.required("uri");
  if (uri.startsWith("tcp:")) throw list.unsupported("QMP over TCP");
  if (!uri.startsWith("unix:")) throw list.invalid(`'${uri}' is not unix:PATH`);
  const path = uri.slice(5);
  if (path === "") throw list.syntax("empty socket path");
  const wait = readServerWait(list);
  return { path: checkSocketPath("-qmp", path), wait };
}

/** A parsed `-mon`, its chardev still to resolve. */
export interface MonRequest {
  chardev: string;
  text: string;
}

/**
 * Parses `-mon`.
 * @throws {TypeError} on a mode other than control, or an unknown key
 */
export function parseMon(text: string): MonRequest {
  const list = new OptionList("-mon", text, { form: MON_OPTION.form });
  list.only(["chardev", "mode", "id", "pretty"]);
  const chardev = list.required("chardev");
  const mode = list.string("mode");
  if (mode === undefined) throw list.invalid("missing 'mode=control' (QEMU's default readline is HMP)");
  if (mode !== "control") throw list.unsupported(`mode=${mode} (HMP)`);
  if (list.bool("pretty", false)) throw list.unsupported("pretty=on");
  return { chardev, text };
}

/**
 * Resolves a `-mon` against the chardevs.
 * @param used marks the chardev as used
 * @throws {TypeError} when no chardev has the id, or it is not a UNIX server socket
 */
export function resolveMon(
  mon: MonRequest,
  chardevs: ReadonlyMap<string, Chardev>,
  used: (id: string) => void,
): QmpConfig {
  const dev = chardevs.get(mon.chardev);
  if (!dev) throw new TypeError(`Cannot use -mon '${mon.text}': no -chardev has id=${mon.chardev}`);
  used(mon.chardev);
  if (dev.kind !== "socket") {
    throw new TypeError(
      `Cannot use -mon '${mon.text}': chardev '${dev.id}' is ${dev.kind}; QMP needs -chardev socket,id=${dev.id},path=PATH,server`,
    );
  }
  if (!dev.server) {
    throw new TypeError(
      `Cannot use -mon '${mon.text}': chardev '${dev.id}' without 'server' (client mode) is not supported yet`,
    );
  }
  return { path: dev.path, wait: dev.wait };
}
