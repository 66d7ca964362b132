/**
 * A tiny mutex over one Int32 word of a SharedArrayBuffer, for device registers that several
 * threads touch (vCPU Workers and the main thread, DESIGN.md §2). Uncontended it is one
 * `Atomics.compareExchange`; contended it spins briefly, then sleeps in `Atomics.wait`
 * (Drepper's three-state futex mutex: 0 free, 1 held, 2 held with waiters).
 * @module
 */

const FREE = 0, HELD = 1, CONTENDED = 2;
const SPINS = 200;

/**
 * Takes the lock in `words[index]`. Not reentrant: a thread must not take it twice.
 * @param words the shared Int32 view
 * @param index the lock word
 */
export function lockShared(words: Int32Array, index: number): void {
  if (Atomics.compareExchange(words, index, FREE, HELD) === FREE) return;
  for (let i = 0; i < SPINS; i++) {
    if (Atomics.load(words, index) === FREE && Atomics.compareExchange(words, index, FREE, HELD) === FREE) {
      return;
    }
  }
  while (Atomics.exchange(words, index, CONTENDED) !== FREE) Atomics.wait(words, index, CONTENDED, 10);
}

/**
 * Releases the lock in `words[index]` and wakes one sleeper if there is any.
 * @param words the shared Int32 view
 * @param index the lock word
 */
export function unlockShared(words: Int32Array, index: number): void {
  if (Atomics.exchange(words, index, FREE) === CONTENDED) Atomics.notify(words, index, 1);
}
