import assert from "node:assert/strict";
import { JsonFloat, parseQmpJson } from "./json_parser.ts";

const enc = new TextEncoder();

function parse(text: string | Uint8Array) {
  return parseQmpJson(typeof text === "string" ? enc.encode(text) : text);
}

function refusal(text: string | Uint8Array): string {
  try {
    parse(text);
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error(`accepted ${text}`);
}

Deno.test("parseQmpJson() parses what JSON.parse parses, the same way", () => {
  for (
    const t of ['{"a":[1,-2,true,false,null,"x\\n\\u00e9\\ud83d\\ude00"],"b":{}}', "[]", '""', "0", "-0"]
  ) {
    assert.deepEqual(parse(t).value, JSON.parse(t), t);
  }
});

Deno.test("parseQmpJson() keeps integer literals exact and float literals apart", () => {
  const v = parse('{"a":12345678901234567890,"b":300,"c":300.0,"d":3e2}').value as Record<string, unknown>;
  assert.equal(v.a, 12345678901234567890n);
  assert.equal(v.b, 300);
  assert.deepEqual(v.c, new JsonFloat(300, "300.0"));
  assert.deepEqual(v.d, new JsonFloat(300, "3e2"));
});

Deno.test("parseQmpJson() refuses duplicate keys, invalid UTF-8 and malformed numbers", () => {
  assert.equal(refusal('{"a":1,"a":1}'), "JSON parse error, duplicate key");
  assert.equal(refusal('[{"x":{"a":1,"a":2}}]'), "JSON parse error, duplicate key");
  assert.equal(
    refusal(new Uint8Array([0x22, 0xff, 0x22])),
    "JSON parse error, invalid UTF-8 sequence in string",
  );
  assert.equal(refusal(new Uint8Array([0x5b, 0xc3, 0xa9, 0x5d])), "JSON parse error, stray byte 0xc3");
  assert.equal(refusal("01"), "JSON parse error, leading zero in number");
  assert.equal(refusal("1."), "JSON parse error, invalid number");
  assert.equal(refusal('{"a":1,}'), "JSON parse error, key is not a string in dict");
  assert.equal(refusal('{"a" 1}'), "JSON parse error, missing : in object pair");
  assert.equal(refusal('{"a":1 "b":2}'), "JSON parse error, expected separator in dict");
  assert.equal(refusal("[1 2]"), "JSON parse error, expected separator in list");
  assert.equal(refusal('"a\tb"'), "JSON parse error, control character in string");
  assert.equal(refusal('"\\x"'), "JSON parse error, invalid escape sequence in string");
  assert.equal(refusal("hello"), "JSON parse error, expecting value");
  assert.equal(refusal('{"a":1} x'), "JSON parse error, stray 'x'");
});

Deno.test("parseQmpJson() keeps a __proto__ key as a plain key", () => {
  const v = parse('{"__proto__":{"polluted":1}}').value as Record<string, unknown>;
  assert.equal(Object.getPrototypeOf(v), Object.prototype);
  assert.deepEqual(Object.keys(v), ["__proto__"]);
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
});

Deno.test("parseQmpJson() returns the top-level id's source text without whitespace between tokens", () => {
  assert.equal(parse('{"execute":"x","id": 12345678901234567890 }').idText, "12345678901234567890");
  assert.equal(parse('{"id":{ "a" : [ 1 ,\n2 ], "b c":"d e" }}').idText, '{"a":[1,2],"b c":"d e"}');
  assert.equal(parse('{"x":{"id":1}}').idText, undefined);
  assert.equal(parse('{"id":"\\u00e9"}').idText, '"\\u00e9"');
});
