import assert from "node:assert/strict";
import { AdaptivePoll, POLL_START_US } from "./adaptive_poll.ts";

Deno.test("AdaptivePoll drops to 0 when events come later than the bound, grows while they come within it", () => {
  let t = 0;
  const p = new AdaptivePoll(32, () => t);
  assert.equal(p.us, 32, "starts at the bound");
  const idleFor = (us: number) => {
    p.idle();
    t += us / 1000;
    p.wake();
  };
  idleFor(200); // an O_DIRECT completion: polling 32 µs would not have caught it
  assert.equal(p.us, 0);
  idleFor(500);
  assert.equal(p.us, 0, "stays off while events come late");
  idleFor(10); // the guest refilled 10 µs after the pass: polling would have caught it
  assert.equal(p.us, POLL_START_US);
  idleFor(10);
  assert.equal(p.us, 8);
  idleFor(10);
  assert.equal(p.us, 16, "10 µs is more than 8: grows");
  idleFor(10);
  assert.equal(p.us, 16, "10 µs is within the poll time: it would have been caught, no change");
  idleFor(30);
  assert.equal(p.us, 32);
  idleFor(30);
  assert.equal(p.us, 32, "never past the bound");
  idleFor(33);
  assert.equal(p.us, 0);
});

Deno.test("AdaptivePoll: a wake without an idle spell before it changes nothing; bound 0 never polls", () => {
  let t = 0;
  const p = new AdaptivePoll(32, () => t);
  t = 10;
  p.wake();
  assert.equal(p.us, 32);
  const off = new AdaptivePoll(0, () => t);
  off.idle();
  t += 1;
  off.wake();
  assert.equal(off.us, 0);
});

Deno.test("AdaptivePoll hit/miss: grows on hits, halves on misses down to 0, regrows from 0 by idle time", () => {
  let t = 0;
  const p = new AdaptivePoll(32, () => t);
  p.miss();
  assert.equal(p.us, 16);
  p.hit();
  assert.equal(p.us, 32);
  p.hit();
  assert.equal(p.us, 32, "never past the bound");
  p.miss();
  p.miss();
  p.miss();
  assert.equal(p.us, POLL_START_US);
  p.miss();
  assert.equal(p.us, 0, "below the start time: off");
  p.hit();
  assert.equal(p.us, 0, "a hit cannot happen at 0 and changes nothing");
  p.idle();
  t += 0.01; // the next event came 10 µs later: polling would have caught it
  p.wake();
  assert.equal(p.us, POLL_START_US);
  const off = new AdaptivePoll(0, () => t);
  off.miss();
  off.hit();
  assert.equal(off.us, 0);
});
