/**
 * Migration parameters (QMP `migrate-set-parameters` / `query-migrate-parameters`) and
 * capabilities (`migrate-set-capabilities` / `query-migrate-capabilities`), with defaults and
 * validation. Names, units and ranges are QEMU's where QEMU has the knob.
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
  /**
   * auto-converge: the first vCPU throttle in percent, once a pass does not shrink the dirty set
   * enough.
   * @default {20}
   */
  "cpu-throttle-initial": number;
  /**
   * auto-converge: how many percent the throttle rises each time a pass still dirties too much.
   * @default {10}
   */
  "cpu-throttle-increment": number;
  /**
   * auto-converge: near the end, raise the throttle only as far as the measured dirty rate needs
   * (at most `cpu-throttle-increment`) instead of by the full increment.
   * @default {false}
   */
  "cpu-throttle-tailslow": boolean;
  /**
   * auto-converge: the highest throttle in percent.
   * @default {99}
   */
  "max-cpu-throttle": number;
  /**
   * auto-converge: throttle when the bytes dirtied since the last sync exceed this percentage of
   * the bytes sent in that time.
   * @default {50}
   */
  "throttle-trigger-threshold": number;
  /** Id of a `-object tls-creds-x509` to speak TLS with; `""` = plaintext (QEMU's name). @default {""} */
  "tls-creds": string;
  /** Host name the destination's certificate must carry; `""` = the uri's host (QEMU). @default {""} */
  "tls-hostname": string;
  /**
   * multifd: how many extra connections carry RAM (QEMU's name and range); both sides must agree.
   * @default {2}
   */
  "multifd-channels": number;
}

/** The defaults. */
export const DEFAULT_MIGRATION_PARAMETERS: Readonly<MigrationParameters> = Object.freeze({
  "downtime-limit": 300,
  "max-bandwidth": 0,
  "max-iterations": 30,
  "max-precopy-time": 0,
  "convergence-policy": "cancel",
  "cpu-throttle-initial": 20,
  "cpu-throttle-increment": 10,
  "cpu-throttle-tailslow": false,
  "max-cpu-throttle": 99,
  "throttle-trigger-threshold": 50,
  "tls-creds": "",
  "tls-hostname": "",
  "multifd-channels": 2,
});

const INTEGER_LIMITS: Record<string, [number, number]> = {
  "downtime-limit": [0, 2_000_000],
  "max-bandwidth": [0, Number.MAX_SAFE_INTEGER],
  "max-iterations": [1, 100_000],
  "max-precopy-time": [0, 86_400_000],
  "cpu-throttle-initial": [1, 99],
  "cpu-throttle-increment": [1, 99],
  "max-cpu-throttle": [1, 99],
  "throttle-trigger-threshold": [1, 100],
  "multifd-channels": [1, 255],
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
    if (k === "cpu-throttle-tailslow") {
      if (typeof v !== "boolean") {
        throw new TypeError(`Cannot set migration parameter '${k}' to '${String(v)}': not a boolean`);
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

/** Optional features of a migration (QMP `migrate-set-capabilities`). Names are QEMU's. */
export interface MigrationCapabilities {
  /**
   * Throttle the vCPUs when the dirty passes do not converge (see the `cpu-throttle-*`
   * parameters). On by default in ferry (QEMU: off), so that a guest that dirties memory faster
   * than the link moves it still converges within `downtime-limit`.
   * @default {true}
   */
  "auto-converge": boolean;
  /**
   * Allow `migrate-start-postcopy`: the destination runs the guest before all RAM arrived and
   * fetches the rest on demand (userfaultfd). Needed on both sides, as in QEMU. @default {false}
   */
  "postcopy-ram": boolean;
  /** Destination: report `postcopy-blocktime` and `postcopy-vcpu-blocktime`. @default {false} */
  "postcopy-blocktime": boolean;
  /**
   * Send RAM over `multifd-channels` extra connections, each driven by its own Worker on both
   * sides (multifd.ts); the main connection keeps control and state. Both sides must set it.
   * @default {false}
   */
  multifd?: boolean;
  /**
   * Source, `unix:` only: a paused guest's pages go into the socket by reference (vmsplice and
   * splice: splice.ts) instead of being copied into it, so the source neither copies them nor
   * makes the kernel allocate socket buffer pages for them. On by default in ferry (QEMU: off, and
   * there it needs multifd and `MSG_ZEROCOPY`): measured faster with and without `-mem-prealloc`
   * on the destination (docs/migration-performance.md, "Pages by reference"). Over `tcp:` ferry
   * copies either way (no faster on loopback). @default {true}
   */
  "zero-copy-send"?: boolean;
}

/** The default capabilities. */
export const DEFAULT_MIGRATION_CAPABILITIES: Readonly<MigrationCapabilities> = Object.freeze({
  "auto-converge": true,
  "postcopy-ram": false,
  "postcopy-blocktime": false,
  multifd: false,
  "zero-copy-send": true,
});

/** One entry of `migrate-set-capabilities` / `query-migrate-capabilities`. */
export interface MigrationCapabilityStatus {
  capability: string;
  state: boolean;
}

/**
 * Applies a `migrate-set-capabilities` list to `current`, all or nothing.
 * @param current the capabilities in force
 * @param update untrusted QMP `capabilities` entries
 * @returns new capabilities (`current` is not changed)
 * @throws {TypeError} for an unknown capability or a malformed entry
 */
export function updateMigrationCapabilities(
  current: Readonly<MigrationCapabilities>,
  update: readonly unknown[],
): MigrationCapabilities {
  const next: MigrationCapabilities = { ...current };
  for (const entry of update) {
    const e = entry as Partial<MigrationCapabilityStatus> | null;
    if (typeof e !== "object" || e === null || typeof e.capability !== "string") {
      throw new TypeError("Cannot set migration capabilities: each entry needs 'capability' and 'state'");
    }
    if (!Object.hasOwn(DEFAULT_MIGRATION_CAPABILITIES, e.capability)) {
      throw new TypeError(`Cannot set migration capability '${e.capability}': no such capability`);
    }
    if (typeof e.state !== "boolean") {
      throw new TypeError(`Cannot set migration capability '${e.capability}': 'state' must be a boolean`);
    }
    next[e.capability as keyof MigrationCapabilities] = e.state;
  }
  return next;
}

/** The `query-migrate-capabilities` reply. */
export function listMigrationCapabilities(c: Readonly<MigrationCapabilities>): MigrationCapabilityStatus[] {
  return Object.entries(c).map(([capability, state]) => ({ capability, state }));
}
