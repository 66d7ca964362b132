/**
 * Source vs destination compatibility, checked before any RAM moves: the canonical configuration
 * attributes (`-m`, `-smp`, `-machine`, kernel, each device attribute) and the host attributes
 * (CPU vendor, KVM API version, platform MSRs) must be equal, key by key.
 * @module
 */

/** The two attribute sets each side offers. */
export interface VmAttributes {
  config: Record<string, string>;
  host: Record<string, string>;
}

/** The first attribute that differs; `source`/`destination` are `undefined` when absent there. */
export class ConfigMismatchError extends Error {
  override name = "ConfigMismatchError";
  readonly attribute: string;
  readonly source: string | undefined;
  readonly destination: string | undefined;

  constructor(attribute: string, source: string | undefined, destination: string | undefined) {
    super(`${attribute}: source ${source ?? "(absent)"}, destination ${destination ?? "(absent)"}`);
    this.attribute = attribute;
    this.source = source;
    this.destination = destination;
  }
}

function own(r: Record<string, string>, k: string): string | undefined {
  return Object.hasOwn(r, k) ? r[k] : undefined;
}

function compare(source: Record<string, string>, destination: Record<string, string>): void {
  for (const k of Object.keys(source)) {
    const s = own(source, k);
    const d = own(destination, k);
    if (s !== d) throw new ConfigMismatchError(k, s, d);
  }
  for (const k of Object.keys(destination)) {
    if (!Object.hasOwn(source, k)) throw new ConfigMismatchError(k, undefined, own(destination, k));
  }
}

/**
 * Throws on the first difference: configuration attributes in the source's order, then
 * destination-only ones, then host attributes the same way.
 * @throws {ConfigMismatchError} e.g. `-smp: source 2, destination 4`
 */
export function checkCompatibility(source: VmAttributes, destination: VmAttributes): void {
  compare(source.config, destination.config);
  compare(source.host, destination.host);
}
