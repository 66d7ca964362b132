/**
 * Private helpers for the QEMU/StratoVirt option-value syntax `a=b,c=d`, `server,nowait`, with
 * QEMU's `,,` escape for a literal comma, and the option descriptions the tokenizer and the help
 * text share.
 * @module
 */

/** How an option takes its value on the command line. */
export type Arity =
  /** A flag: `-daemonize`. */
  | "none"
  /** Exactly one value: `-m 2G`. */
  | "one"
  /** A value if the next word does not start with `-`: `-D` or `-D ferry.log` (StratoVirt `can_no_value`). */
  | "optional"
  /**
   * One value, and any following words that do not start with `-` are more values
   * (StratoVirt `takes_values`: `-append console=ttyS0 quiet` or `-drive A B`).
   */
  | "many";

/** What ferry does with an option. */
export type OptionStatus =
  /** Parsed into {@linkcode MachineConfig}. */
  | "supported"
  /** Accepted and ignored, as StratoVirt does (libvirt compatibility no-ops). */
  | "ignored"
  /** Recognised and refused with "not supported yet". */
  | "unsupported";

/** One command-line option: its grammar and its line in `ferry -help`. */
export interface OptionInfo {
  /** Name with its dash, e.g. `-m`. */
  name: string;
  /** Other spellings, e.g. `-h` for `-help`. */
  aliases?: readonly string[];
  /** How the value is given. */
  arity: Arity;
  /** May be given more than once (StratoVirt `multiple(true)`); else a second one is an error. */
  repeat: boolean;
  /** The value's form for help and error messages, e.g. `[size=]N[K|M|G]`; empty for a flag. */
  form: string;
  /** One line: what it does and its default. */
  help: string;
  /** Supported, ignored or refused. */
  status: OptionStatus;
}

/** `Option -x is not supported yet` with an optional reason. */
export function notSupportedYet(what: string, why?: string): TypeError {
  return new TypeError(`${what} is not supported yet${why ? `: ${why}` : ""}`);
}

/**
 * Splits an option value at single commas; `,,` stands for a literal comma (QEMU).
 * @param text e.g. `file=a,,b.img,id=d0`
 * @returns e.g. `["file=a,b.img", "id=d0"]`
 */
export function splitList(text: string): string[] {
  const items: string[] = [];
  let cur = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === ",") {
      if (text[i + 1] === ",") {
        cur += ",";
        i++;
      } else {
        items.push(cur);
        cur = "";
      }
    } else {
      cur += c;
    }
  }
  items.push(cur);
  return items;
}

/** Escapes a value for an option list: each `,` becomes `,,`. */
export function escapeValue(value: string): string {
  return value.replaceAll(",", ",,");
}

/** StratoVirt `MAX_STRING_LENGTH` for ids and names. */
export const MAX_ID_LENGTH = 255;

const TRUE_WORDS = new Set(["on", "true", "yes"]);
const FALSE_WORDS = new Set(["off", "false", "no"]);

/** Options for {@linkcode OptionList}. */
export interface OptionListOptions {
  /** The key a leading bare word stands for, e.g. `type` for `-machine q35`. */
  implied?: string;
  /** The first item is always the implied key's value, even with a `=` in it (`-qmp unix:/a=b`). */
  impliedRaw?: boolean;
  /** The accepted form, quoted in errors, e.g. `[size=]N[K|M|G]`. */
  form: string;
}

/**
 * A parsed `a=b,c,d=e` value of one option. A bare word is a flag (`server`); the first bare word
 * is the implied key's value when one is given (`-machine q35` = `-machine type=q35`).
 * Errors are one line: `Cannot parse -drive 'x=1': unknown key 'x'; expected -drive FORM`.
 */
export class OptionList {
  readonly #option: string;
  readonly #text: string;
  readonly #form: string;
  readonly #values = new Map<string, string | true>();
  readonly #order: string[] = [];

  /**
   * @param option the option with its dash, e.g. `-drive`
   * @param text its value
   * @throws {SyntaxError} on an empty item, an empty key or a repeated key
   */
  constructor(option: string, text: string, options: OptionListOptions) {
    this.#option = option;
    this.#text = text;
    this.#form = options.form;
    const items = splitList(text);
    items.forEach((item, i) => {
      if (item === "") throw this.syntax(text === "" ? "empty value" : "empty item (stray comma)");
      const eq = item.indexOf("=");
      let key: string;
      let value: string | true;
      if (eq < 0 || (i === 0 && options.impliedRaw)) {
        if (i === 0 && options.implied !== undefined) {
          key = options.implied;
          value = item;
        } else {
          key = item;
          value = true;
        }
      } else {
        key = item.slice(0, eq);
        value = item.slice(eq + 1);
        if (key === "") throw this.syntax(`empty key in '${item}'`);
      }
      if (this.#values.has(key)) throw this.syntax(`key '${key}' given twice`);
      this.#values.set(key, value);
      this.#order.push(key);
    });
  }

  /** The option, e.g. `-drive`. */
  get option(): string {
    return this.#option;
  }

  /** The raw value text. */
  get text(): string {
    return this.#text;
  }

  /** Keys in the order given. */
  keys(): string[] {
    return [...this.#order];
  }

  /** True when `key` was given, as `key=value` or a bare word. */
  has(key: string): boolean {
    return this.#values.has(key);
  }

  /**
   * Throws unless every key is one of `accepted` (bare `noX` counts as `X` when `X` is accepted).
   * @throws {TypeError} naming the first unknown key and the accepted ones
   */
  only(accepted: readonly string[]): void {
    for (const key of this.#order) {
      const ok = accepted.includes(key) ||
        (key.startsWith("no") && this.#values.get(key) === true && accepted.includes(key.slice(2)));
      if (!ok) throw this.invalid(`unknown key '${key}' (accepted: ${accepted.join(", ")})`);
    }
  }

  /**
   * The value of `key=value`.
   * @throws {SyntaxError} when `key` was given as a bare word or with an empty value
   */
  string(key: string): string | undefined {
    const v = this.#values.get(key);
    if (v === undefined) return undefined;
    if (v === true) throw this.syntax(`'${key}' needs a value (${key}=...)`);
    if (v === "") throw this.syntax(`'${key}' has an empty value`);
    return v;
  }

  /**
   * The value of `key=value`, which must be present.
   * @throws {TypeError} when absent
   */
  required(key: string): string {
    const v = this.string(key);
    if (v === undefined) throw this.invalid(`missing '${key}'`);
    return v;
  }

  /**
   * A boolean: `key=on|off|true|false|yes|no`, a bare `key` (on) or a bare `nokey` (off, QEMU's
   * `nowait`), else `fallback`.
   * @throws {SyntaxError} on another word, or when both `key` and `nokey` are given
   */
  bool(key: string, fallback: boolean): boolean {
    const v = this.#values.get(key);
    const negated = this.#values.get(`no${key}`) === true;
    if (v !== undefined && negated) throw this.syntax(`both '${key}' and 'no${key}' given`);
    if (negated) return false;
    if (v === undefined) return fallback;
    if (v === true) return true;
    if (TRUE_WORDS.has(v)) return true;
    if (FALSE_WORDS.has(v)) return false;
    throw this.syntax(`'${key}=${v}' is not on or off`);
  }

  /**
   * A decimal integer in `min..max`.
   * @throws {SyntaxError} when not a decimal integer; {RangeError} when outside the range
   */
  int(key: string, range: { min: number; max: number }): number | undefined {
    const v = this.string(key);
    if (v === undefined) return undefined;
    if (!/^[0-9]+$/.test(v)) throw this.syntax(`'${key}=${v}' is not a decimal number`);
    const n = Number(v);
    if (n < range.min || n > range.max) {
      throw this.range(`'${key}=${v}' is outside ${range.min}..${range.max}`);
    }
    return n;
  }

  /** A `SyntaxError`: the text cannot be read as the form. */
  syntax(detail: string): SyntaxError {
    return new SyntaxError(this.#message(detail));
  }

  /** A `TypeError`: well formed, but a wrong, missing, unknown or unsupported part. */
  invalid(detail: string): TypeError {
    return new TypeError(this.#message(detail));
  }

  /** A `RangeError`: a number out of its range. */
  range(detail: string): RangeError {
    return new RangeError(this.#message(detail));
  }

  /** A `TypeError` for a recognised value ferry does not implement yet. */
  unsupported(what: string): TypeError {
    return new TypeError(`Cannot use ${this.#option} '${this.#text}': ${what} is not supported yet`);
  }

  #message(detail: string): string {
    return `Cannot parse ${this.#option} '${this.#text}': ${detail}; expected ${this.#option} ${this.#form}`;
  }
}

/**
 * Reads and checks an `id=` value.
 * @throws {TypeError} when missing; {RangeError} when longer than 255
 */
export function readId(list: OptionList): string {
  const id = list.required("id");
  if (id.length > MAX_ID_LENGTH) throw list.range(`id longer than ${MAX_ID_LENGTH} characters`);
  return id;
}
