/**
 * A small argument checker for QMP commands: per command, argument name → type and required flag.
 * Errors are `GenericError`s that name the argument, worded like QEMU's
 * (`Parameter 'uri' is missing`, `Invalid parameter type for 'uri', expected: string`,
 * `Parameter 'foo' is unexpected`).
 * @module
 */
import { JsonFloat, plainJson } from "./json_parser.ts";
import { QmpError } from "./protocol.ts";

/**
 * Argument types: `str`, `bool`, `int` (safe integer), `uint` (non-negative safe integer), `number`,
 * `object` (a JSON object), `str[]` (an array of strings), `object[]` (an array of JSON objects).
 *
 * `int` and `uint` take integer literals only: `300.0` or `3e2` ({@link JsonFloat} from the parser) is
 * refused with QEMU's words (`Parameter 'x' expects uint64`); `number` takes both.
 */
export type ArgType = "str" | "bool" | "int" | "uint" | "number" | "object" | "str[]" | "object[]";

/** One argument of a command. */
export interface ArgSpec {
  /** The JSON type accepted. */
  readonly type: ArgType;
  /** Whether the argument must be present. */
  readonly required: boolean;
  /** For `str`: the only values accepted. */
  readonly enum?: readonly string[];
  /** For numbers: the smallest value accepted (`uint` implies 0). */
  readonly min?: number;
  /** For numbers: the largest value accepted. */
  readonly max?: number;
}

/** A command's arguments: name → spec. */
export type ArgSchema = Readonly<Record<string, ArgSpec>>;

type ValueOf<S extends ArgSpec> = S extends { readonly enum: readonly (infer E)[] } ? E
  : S["type"] extends "str" ? string
  : S["type"] extends "bool" ? boolean
  : S["type"] extends "int" | "uint" | "number" ? number
  : S["type"] extends "object" ? Record<string, unknown>
  : S["type"] extends "str[]" ? string[]
  : S["type"] extends "object[]" ? Record<string, unknown>[]
  : never;

type RequiredKeys<S extends ArgSchema> = {
  [K in keyof S]: S[K]["required"] extends true ? K : never;
}[keyof S];
type OptionalKeys<S extends ArgSchema> = Exclude<keyof S, RequiredKeys<S>>;

/** The checked arguments' type, derived from a schema written `as const`. */
export type ArgsOf<S extends ArgSchema> =
  & { -readonly [K in RequiredKeys<S>]: ValueOf<S[K]> }
  & { -readonly [K in OptionalKeys<S>]?: ValueOf<S[K]> };

const TYPE_NAMES: Record<ArgType, string> = {
  str: "string",
  bool: "boolean",
  int: "integer",
  uint: "integer",
  number: "number",
  object: "object",
  "str[]": "array of strings",
  "object[]": "array of objects",
};

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function wrongType(name: string, spec: ArgSpec): QmpError {
  return new QmpError(
    "GenericError",
    `Invalid parameter type for '${name}', expected: ${TYPE_NAMES[spec.type]}`,
  );
}

/** QEMU's words for a number with a fraction or exponent where an integer is required. */
function notAnInteger(name: string, spec: ArgSpec): QmpError {
  return new QmpError(
    "GenericError",
    `Parameter '${name}' expects ${spec.type === "int" ? "int64" : "uint64"}`,
  );
}

function checkNumber(name: string, spec: ArgSpec, v: number): void {
  if (spec.type !== "number" && !Number.isSafeInteger(v)) {
    if (Number.isInteger(v)) {
      throw new QmpError("GenericError", `Parameter '${name}' is out of range: '${v}'`);
    }
    throw notAnInteger(name, spec);
  }
  const min = spec.min ?? (spec.type === "uint" ? 0 : undefined);
  const max = spec.max;
  if ((min !== undefined && v < min) || (max !== undefined && v > max)) {
    let expects: string;
    if (min !== undefined && max !== undefined) expects = `a value from ${min} to ${max}`;
    else if (min === 0) expects = "a non-negative value";
    else if (min !== undefined) expects = `a value of at least ${min}`;
    else expects = `a value of at most ${max}`;
    throw new QmpError("GenericError", `Parameter '${name}' expects ${expects}, got '${v}'`);
  }
}

function checkValue(name: string, spec: ArgSpec, v: unknown): void {
  switch (spec.type) {
    case "str":
      if (typeof v !== "string") throw wrongType(name, spec);
      if (spec.enum && !spec.enum.includes(v)) {
        const allowed = spec.enum.map((e) => `'${e}'`).join(", ");
        throw new QmpError("GenericError", `Parameter '${name}' expects one of ${allowed}, got '${v}'`);
      }
      return;
    case "bool":
      if (typeof v !== "boolean") throw wrongType(name, spec);
      return;
    case "int":
    case "uint":
    case "number": {
      if (v instanceof JsonFloat) {
        if (spec.type !== "number") throw notAnInteger(name, spec);
        v = v.value;
      }
      if (typeof v === "bigint") {
        throw new QmpError("GenericError", `Parameter '${name}' is out of range: '${v}'`);
      }
      if (typeof v !== "number" || !Number.isFinite(v)) throw wrongType(name, spec);
      checkNumber(name, spec, v);
      return;
    }
    case "object":
      if (!isPlainObject(v)) throw wrongType(name, spec);
      return;
    case "str[]":
      if (!Array.isArray(v) || !v.every((e) => typeof e === "string")) throw wrongType(name, spec);
      return;
    case "object[]":
      if (!Array.isArray(v) || !v.every(isPlainObject)) throw wrongType(name, spec);
      return;
  }
}

/**
 * Checks a command's `arguments` against its schema.
 * @param schema the command's arguments
 * @param args the `arguments` member as received (already known to be an object)
 * @returns a copy of `args`, typed, with `number` and `object` arguments as plain JS values
 * @throws QmpError `GenericError` naming the first unexpected, missing or ill-typed argument
 *
 * @example
 * ```ts
 * const schema = { uri: { type: "str", required: true } } as const;
 * checkArgs(schema, { uri: "tcp:127.0.0.1:4446" }).uri; // string
 * checkArgs(schema, {}); // throws "Parameter 'uri' is missing"
 * ```
 */
export function checkArgs<S extends ArgSchema>(schema: S, args: Record<string, unknown>): ArgsOf<S> {
  for (const name of Object.keys(args)) {
    if (!Object.hasOwn(schema, name)) throw new QmpError("GenericError", `Parameter '${name}' is unexpected`);
  }
  for (const [name, spec] of Object.entries(schema)) {
    if (!Object.hasOwn(args, name)) {
      if (spec.required) throw new QmpError("GenericError", `Parameter '${name}' is missing`);
      continue;
    }
    checkValue(name, spec, args[name]);
  }
  const out: Record<string, unknown> = {};
  for (const name of Object.keys(args)) {
    const t = schema[name]!.type;
    out[name] = t === "number" || t === "object" ? plainJson(args[name]) : args[name];
  }
  return out as ArgsOf<S>;
}
