import assert from "node:assert/strict";
import { JsonSplitter, type SplitFrame } from "./json_splitter.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

function texts(frames: SplitFrame[]): string[] {
  return frames.map((f) => f.kind === "text" ? dec.decode(f.bytes) : `!${f.desc}`);
}

Deno.test("JsonSplitter splits several objects on one line", () => {
  const s = new JsonSplitter();
  assert.deepEqual(texts(s.push(enc.encode('{"a":1}{"b":[2,{"c":3}]}  {"d":"}"}\r\n'))), [
    '{"a":1}',
    '{"b":[2,{"c":3}]}',
    '{"d":"}"}',
  ]);
  assert.equal(s.bufferedBytes, 0);
});

Deno.test("JsonSplitter joins an object split across pushes, byte by byte", () => {
  const s = new JsonSplitter();
  const text = '{"execute":"x","id":"esc \\\\ \\" { [ é"}';
  const out: SplitFrame[] = [];
  for (const b of enc.encode(text)) out.push(...s.push(new Uint8Array([b])));
  assert.deepEqual(texts(out), [text]);
  assert.equal(JSON.parse(text).id, 'esc \\ " { [ é');
});

Deno.test("JsonSplitter accepts an object spread over several lines", () => {
  const s = new JsonSplitter();
  assert.deepEqual(texts(s.push(enc.encode('{\n "execute":\n  "x"\n}\n'))), ['{\n "execute":\n  "x"\n}']);
});

Deno.test("JsonSplitter ends a frame at a raw newline inside a string", () => {
  const s = new JsonSplitter();
  const out = texts(s.push(enc.encode('{"execute":"x\n{"execute":"y"}\n')));
  assert.deepEqual(out, ['{"execute":"x', '{"execute":"y"}']);
  assert.throws(() => JSON.parse(out[0]!));
});

Deno.test("JsonSplitter resyncs when an object starts where a value cannot", () => {
  const s = new JsonSplitter();
  assert.deepEqual(texts(s.push(enc.encode('{"execute":"x"\n{"execute":"y"}{"z":[{"a":1},[2]]}'))), [
    '{"execute":"x"\n',
    '{"execute":"y"}',
    '{"z":[{"a":1},[2]]}',
  ]);
});

Deno.test("JsonSplitter turns bytes outside objects into a frame ending at the newline", () => {
  const s = new JsonSplitter();
  assert.deepEqual(texts(s.push(enc.encode('hello\n42\n{"a":1}\n'))), ["hello", "42", '{"a":1}']);
});

Deno.test("JsonSplitter refuses an oversized message once, discards it unbuffered, then resumes", () => {
  const s = new JsonSplitter({ maxMessageBytes: 1000 });
  const out: SplitFrame[] = [];
  out.push(...s.push(enc.encode('{"execute":"x","id":"')));
  for (let i = 0; i < 100; i++) {
    out.push(...s.push(enc.encode("y".repeat(100))));
    assert.ok(s.bufferedBytes <= 1000);
  }
  out.push(...s.push(enc.encode('"} {"trailing":"same line"}\n{"ok":true}\n')));
  assert.equal(out.length, 2);
  assert.equal(out[0]!.kind, "refused");
  assert.match((out[0] as { desc: string }).desc, /^Message too large: over 1000 bytes/);
  assert.deepEqual(texts([out[1]!]), ['{"ok":true}']);
  assert.equal(s.bufferedBytes, 0);
});

Deno.test("JsonSplitter refuses an oversized message that arrives in one push", () => {
  const s = new JsonSplitter({ maxMessageBytes: 10 });
  const out = texts(s.push(enc.encode('{"a":"0123456789"}\n{"b":1}\n')));
  assert.equal(out.length, 2);
  assert.match(out[0]!, /^!Message too large/);
  assert.equal(out[1], '{"b":1}');
});

Deno.test("JsonSplitter refuses nesting deeper than maxDepth and recovers at the next line", () => {
  const s = new JsonSplitter({ maxDepth: 4 });
  const out = texts(s.push(enc.encode('{"a":[[[[[1]]]]]}\n{"a":[[1]]}\n')));
  assert.deepEqual(out, ["!Invalid JSON: nesting deeper than 4 levels", '{"a":[[1]]}']);
});

Deno.test("JsonSplitter resyncs at the next newline after refusing 100,000 open brackets", () => {
  const s = new JsonSplitter();
  const out = texts(s.push(enc.encode("[".repeat(100_000) + '\n{"execute":"query-status"}\n')));
  assert.deepEqual(out, ["!Invalid JSON: nesting deeper than 1024 levels", '{"execute":"query-status"}']);
  assert.equal(s.bufferedBytes, 0);
});

Deno.test("JsonSplitter resyncs at the next newline after refusing 4 MiB of an unclosed object", () => {
  const s = new JsonSplitter();
  const out: string[] = [];
  out.push(...texts(s.push(enc.encode('{"execute":"query-status"'))));
  const spaces = enc.encode(" ".repeat(64 * 1024));
  for (let i = 0; i < 64; i++) {
    out.push(...texts(s.push(spaces)));
    assert.ok(s.bufferedBytes <= 1024 * 1024);
  }
  out.push(...texts(s.push(enc.encode('\n{"execute":"query-status","id":2}\n'))));
  assert.equal(out.length, 2);
  assert.match(out[0]!, /^!Message too large: over 1048576 bytes/);
  assert.equal(out[1], '{"execute":"query-status","id":2}');
});
