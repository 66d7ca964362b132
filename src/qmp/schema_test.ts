import assert from "node:assert/strict";
import { QmpError } from "./protocol.ts";
import { checkArgs } from "./schema.ts";
import { JsonFloat } from "./json_parser.ts";

const schema = {
  uri: { type: "str", required: true },
  detach: { type: "bool", required: false },
  limit: { type: "uint", required: false, max: 2000 },
  delta: { type: "int", required: false, min: -5 },
  ratio: { type: "number", required: false },
  policy: { type: "str", required: false, enum: ["cancel", "force"] },
  opts: { type: "object", required: false },
  caps: { type: "str[]", required: false },
} as const;

function refusal(args: Record<string, unknown>): string {
  try {
    checkArgs(schema, args);
  } catch (e) {
    assert.ok(e instanceof QmpError);
    assert.equal(e.errorClass, "GenericError");
    return e.desc;
  }
  throw new Error("accepted");
}

Deno.test("checkArgs() accepts well-typed arguments and returns them typed", () => {
  const args = checkArgs(schema, {
    uri: "tcp:1.2.3.4:5",
    detach: true,
    limit: 2000,
    delta: -5,
    ratio: 0.5,
    policy: "force",
    opts: {},
    caps: ["a"],
  });
  const uri: string = args.uri;
  const policy: "cancel" | "force" | undefined = args.policy;
  assert.equal(uri, "tcp:1.2.3.4:5");
  assert.equal(policy, "force");
  assert.deepEqual(checkArgs(schema, { uri: "x" }), { uri: "x" });
});

Deno.test("checkArgs() names a missing, unexpected or ill-typed argument", () => {
  assert.equal(refusal({}), "Parameter 'uri' is missing");
  assert.equal(refusal({ uri: "x", bogus: 1 }), "Parameter 'bogus' is unexpected");
  assert.equal(refusal({ uri: 1 }), "Invalid parameter type for 'uri', expected: string");
  assert.equal(
    refusal({ uri: "x", detach: "yes" }),
    "Invalid parameter type for 'detach', expected: boolean",
  );
  assert.equal(refusal({ uri: "x", limit: 1.5 }), "Parameter 'limit' expects uint64");
  assert.equal(refusal({ uri: "x", limit: "7" }), "Invalid parameter type for 'limit', expected: integer");
  assert.equal(refusal({ uri: "x", limit: null }), "Invalid parameter type for 'limit', expected: integer");
  assert.equal(refusal({ uri: "x", opts: [] }), "Invalid parameter type for 'opts', expected: object");
  assert.equal(
    refusal({ uri: "x", caps: [1] }),
    "Invalid parameter type for 'caps', expected: array of strings",
  );
});

Deno.test("checkArgs() refuses numbers out of range, negative ones for uint", () => {
  assert.equal(
    refusal({ uri: "x", limit: -1 }),
    "Parameter 'limit' expects a value from 0 to 2000, got '-1'",
  );
  assert.equal(
    refusal({ uri: "x", limit: 2001 }),
    "Parameter 'limit' expects a value from 0 to 2000, got '2001'",
  );
  assert.equal(
    refusal({ uri: "x", delta: -6 }),
    "Parameter 'delta' expects a value of at least -5, got '-6'",
  );
  assert.equal(refusal({ uri: "x", delta: 2 ** 60 }), `Parameter 'delta' is out of range: '${2 ** 60}'`);
  assert.equal(
    refusal({ uri: "x", policy: "wait" }),
    "Parameter 'policy' expects one of 'cancel', 'force', got 'wait'",
  );
});

Deno.test("checkArgs() refuses float literals such as 300.0 and 3e2 where an integer is required (QEMU)", () => {
  assert.equal(refusal({ uri: "x", limit: new JsonFloat(300, "300.0") }), "Parameter 'limit' expects uint64");
  assert.equal(refusal({ uri: "x", delta: new JsonFloat(300, "3e2") }), "Parameter 'delta' expects int64");
  assert.equal(
    refusal({ uri: "x", limit: 12345678901234567890n }),
    "Parameter 'limit' is out of range: '12345678901234567890'",
  );
  const args = checkArgs(schema, {
    uri: "x",
    ratio: new JsonFloat(300, "3e2"),
    opts: { a: [new JsonFloat(1.5, "1.5")] },
  });
  assert.deepEqual(args, { uri: "x", ratio: 300, opts: { a: [1.5] } });
});
