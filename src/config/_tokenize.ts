/**
 * Private: turns argv into option occurrences with StratoVirt's single-dash rules
 * (`util/src/arg_parser.rs`): every word starting with `-` is an option and must be known; an
 * option's value is the next word; an option that takes several values (`-append`, `-drive`,
 * `-device`, ...) also takes the bare words after it; an option that is not repeatable may
 * appear once.
 * @module
 */
import type { OptionInfo } from "./_kv.ts";

/** One option as given, with its values (none for a flag). */
export interface Occurrence {
  info: OptionInfo;
  /** The spelling used, e.g. `-h` for `-help`. */
  spelled: string;
  values: string[];
}

function looksLikeOption(word: string): boolean {
  return word.length > 1 && word.startsWith("-");
}

/**
 * Tokenizes `argv` against `options`.
 * @param argv the command line without the program name
 * @param options every option ferry knows
 * @returns the occurrences in command-line order
 * @throws {TypeError} on an unknown option, a missing value, a stray word, a value given to a
 * flag, or a non-repeatable option given twice
 */
export function tokenize(argv: readonly string[], options: readonly OptionInfo[]): Occurrence[] {
  const byName = new Map<string, OptionInfo>();
  for (const o of options) {
    byName.set(o.name, o);
    for (const a of o.aliases ?? []) byName.set(a, o);
  }
  const out: Occurrence[] = [];
  const seen = new Set<OptionInfo>();
  let last: Occurrence | undefined;
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i] as string;
    if (!looksLikeOption(word)) {
      if (last?.info.arity === "many") {
        last.values.push(word);
        continue;
      }
      const after = last ? ` after ${last.spelled}` : "";
      throw new TypeError(
        `Unexpected argument '${word}'${after}: options start with '-' (see 'ferry -help')`,
      );
    }
    const info = byName.get(word);
    if (!info) throw new TypeError(`Unknown option '${word}': see 'ferry -help'`);
    if (seen.has(info) && !info.repeat) {
      throw new TypeError(`Option ${info.name} is given more than once: give it once`);
    }
    seen.add(info);
    const occ: Occurrence = { info, spelled: word, values: [] };
    const next = argv[i + 1];
    if (info.arity === "one" || info.arity === "many") {
      if (next === undefined || looksLikeOption(next)) {
        throw new TypeError(`Missing value for ${word}: expected ${info.name} ${info.form}`);
      }
      occ.values.push(next);
      i++;
    } else if (info.arity === "optional" && next !== undefined && !looksLikeOption(next)) {
      occ.values.push(next);
      i++;
    }
    out.push(occ);
    last = occ;
  }
  return out;
}
