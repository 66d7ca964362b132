/**
 * Migration parameters (QMP `migrate-set-parameters` / `query-migrate-parameters`), with defaults
 * and validation.
 * @module
 */

/** What to do when the dirty passes hit the iteration or time cap without converging. */
export type ConvergencePolicy = "force" | "cancel";

/** Tunables of a precopy migration. Names are the QMP names. */
export interface MigrationParameters {
  /**
   * Longest acceptable pause in ms: switch over when the remaining dirty bytes can be sent in
   * this time at the measured bandwidth.
   * @default {300}
   */
  "downtime-limit": number;
  /**
   * Cap on the send rate in bytes per second, 0 = unlimited. Also caps the bandwidth used in the
   * convergence estimate. Not applied to the last pass (the guest is paused then).
   * @default {0}
   */
  "max-bandwidth": number;
  /**
   * Most dirty passes after the full pass before the policy applies.
   * @default {30}
   */
  "max-iterations": number;
  /**
   * Most time in ms spent iterating before the policy applies, 0 = no time cap.
   * @default {0}
   */
  "max-precopy-time": number;
  /**
   * At the cap: `force` switches over anyway (downtime exceeds the limit), `cancel` fails the
   * migration and leaves the source running.
   * @default {"cancel"}
   */
  "convergence-policy": ConvergencePolicy;
  /** Id of a `-object tls-creds-x509` to speak TLS with; `""` = plaintext (QEMU's name). @default {""} */
  "tls-creds": string;
  /** Host name the destination's certificate must carry; `""` = the uri's host (QEMU). @default {""} */
  "tls-hostname": string;
}

/** The defaults. */
export const DEFAULT_MIGRATION_PARAMETERS: Readonly<MigrationParameters> = Object.freeze({
  "downtime-limit": 300,
  "max-bandwidth": 0,
  "max-iterations": 30,
  "max-precopy-time": 0,
  "convergence-policy": "cancel",
  "tls-creds": "",
  "tls-hostname": "",
});

const INTEGER_LIMITS: Record<string, [number, number]> = {
  "downtime-limit": [0, 2_000_000],
  "max-bandwidth": [0, Number.MAX_SAFE_INTEGER],
  "max-iterations": [1, 100_000],
  "max-precopy-time": [0, 86_400_000],
};

/**
 * Applies a `migrate-set-parameters` update to `current`.
 * @param current the parameters in force
 * @param update untrusted QMP arguments
 * @returns new parameters (`current` is not changed)
 * @throws {TypeError} for an unknown name or a wrong type; {RangeError} for a value out of range
 */
export function updateMigrationParameters(
  current: Readonly<MigrationParameters>,
  update: Record<string, unknown>,
): MigrationParameters {
  const next: MigrationParameters = { ...current };
  for (const [k, v] of Object.entries(update)) {
    if (k === "convergence-policy") {
      if (v !== "force" && v !== "cancel") {
        throw new TypeError(
          `Cannot set migration parameter 'convergence-policy' to '${String(v)}': want force or cancel`,
        );
      }
      next[k] = v;
      continue;
    }
    if (k === "tls-creds" || k === "tls-hostname") {
      if (typeof v !== "string") {
        throw new TypeError(`Cannot set migration parameter '${k}' to '${String(v)}': not a string`);
      }
      next[k] = v;
      continue;
    }
    const limits = INTEGER_LIMITS[k];
    if (!limits) throw new TypeError(`Cannot set migration parameter '${k}': no such parameter`);
    if (typeof v !== "number" || !Number.isInteger(v)) {
      throw new TypeError(`Cannot set migration parameter '${k}' to '${String(v)}': not an integer`);
    }
    if (v < limits[0] || v > limits[1]) {
      throw new RangeError(
        `Cannot set migration parameter '${k}' to '${v}': outside ${limits[0]}..${limits[1]}`,
      );
    }
    (next as unknown as Record<string, number>)[k] = v;
  }
  return next;
}
