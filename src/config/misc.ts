/**
 * The other StratoVirt options (`machine_manager/src/cmdline.rs` `create_args_parser`), each
 * decided one way:
 * - supported: `-name`, `-D [PATH]`, `-help`;
 * - accepted and ignored, as StratoVirt ignores them (hidden libvirt-compatibility options), plus
 *   `-disable-seccomp` (ferry installs no seccomp filter);
 * - refused as not supported yet: everything a later stage may implement (`-daemonize`,
 *   `-pidfile`, `-S`, `-object`, `-numa`, `-mem-path`, `-no-shutdown`, ...).
 * @module
 */
import { MAX_ID_LENGTH, type OptionInfo, OptionList } from "./_kv.ts";

/** `-name`. */
export const NAME_OPTION: OptionInfo = {
  name: "-name",
  arity: "one",
  repeat: false,
  form: "[guest=]NAME[,debug-threads=on|off]",
  help: "guest name (QMP query-name). Default none",
  status: "supported",
};

/** `-D`. */
export const LOG_OPTION: OptionInfo = {
  name: "-D",
  arity: "optional",
  repeat: false,
  form: "[PATH]",
  help: "append log lines to PATH; without PATH, stderr (level from FERRY_LOG). Default stderr",
  status: "supported",
};

/** `-help`. */
export const HELP_OPTION: OptionInfo = {
  name: "-help",
  aliases: ["-h", "--help"],
  arity: "none",
  repeat: true,
  form: "",
  help: "print this help and exit",
  status: "supported",
};

/** `-mem-prealloc` (QEMU's and StratoVirt's name): back all guest RAM with host memory at start. */
export const MEM_PREALLOC_OPTION: OptionInfo = {
  name: "-mem-prealloc",
  arity: "none",
  repeat: true,
  form: "",
  help: "back all guest RAM with host memory at start (a migration destination before its source connects)",
  status: "supported",
};

/** `-daemonize`. */
export const DAEMONIZE_OPTION: OptionInfo = {
  name: "-daemonize",
  arity: "none",
  repeat: false,
  form: "",
  help: "run in the background after initialising",
  status: "unsupported",
};

function ignored(name: string, form: string, arity: OptionInfo["arity"] = "optional"): OptionInfo {
  return {
    name,
    arity,
    repeat: true,
    form,
    help: "accepted for libvirt compatibility; no effect",
    status: "ignored",
  };
}

function later(
  name: string,
  arity: OptionInfo["arity"],
  form: string,
  help: string,
  extra: { aliases?: string[]; repeat?: boolean } = {},
): OptionInfo {
  return {
    name,
    arity,
    repeat: extra.repeat ?? (arity === "many"),
    form,
    help,
    status: "unsupported",
    ...(extra.aliases ? { aliases: extra.aliases } : {}),
  };
}

/** Options accepted and ignored (StratoVirt hides and ignores all but `-disable-seccomp`). */
export const IGNORED_OPTIONS: readonly OptionInfo[] = [
  { ...ignored("-disable-seccomp", "", "none"), help: "ferry installs no seccomp filter; no effect" },
  ignored("-nodefaults", ""),
  ignored("-no-user-config", ""),
  ignored("-nographic", ""),
  ignored("-display", "[none]"),
  ignored("-overcommit", "[mem-lock=off]"),
  ignored("-uuid", "[UUID]"),
  ignored("-sandbox", "[on,obsolete=deny]"),
  ignored("-msg", "[timestamp=on]"),
  ignored("-rtc", "[base=utc]"),
  ignored("-boot", "[strict=on]"),
  ignored("-realtime", "[mlock=off]"),
  ignored("-usb", ""),
];

/** Options refused with "not supported yet". */
export const LATER_OPTIONS: readonly OptionInfo[] = [
  DAEMONIZE_OPTION,
  later("-pidfile", "one", "PATH", "write the PID to PATH (with -daemonize)"),
  later("-S", "none", "", "start with vCPUs stopped until QMP cont", { aliases: ["-freeze"] }),
  later("-mem-path", "one", "PATH", "back guest RAM with a file or hugetlbfs"),
  later("-numa", "many", "node,... | dist,...", "NUMA nodes"),
  later("-no-shutdown", "optional", "", "pause instead of exiting when the guest powers off"),
  later("-battery", "none", "", "ACPI battery and power adapter"),
  later("-trace", "one", "file=PATH|type=all|events|scopes", "trace events"),
  later("-hardware-signature", "one", "N", "ACPI FACS hardware signature"),
  later("-smbios", "many", "type=N,...", "SMBIOS tables"),
  later("-vnc", "one", "IP:PORT", "VNC display"),
  later("-cameradev", "many", "v4l2,id=ID,path=PATH", "camera backend"),
  later("-windows_emu_pid", "one", "PID", "watch an external emulator"),
  later("-mod-test", "one", "unix:PATH", "StratoVirt module-test socket"),
  later("-version", "none", "", "print the version", { aliases: ["-V"] }),
];

/**
 * Parses `-name`: StratoVirt takes the whole value, QEMU/libvirt write `guest=NAME,debug-threads=on`.
 * @returns the guest name
 * @throws {TypeError} on an unknown key; {RangeError} above 255 characters
 */
export function parseName(text: string): string {
  const list = new OptionList("-name", text, { implied: "guest", form: NAME_OPTION.form });
  list.only(["guest", "debug-threads", "process"]);
  list.bool("debug-threads", false);
  const name = list.required("guest");
  if (name.length > MAX_ID_LENGTH) throw list.range(`name longer than ${MAX_ID_LENGTH} characters`);
  return name;
}
