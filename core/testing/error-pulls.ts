import { ValueErrorIterator } from '@sinclair/typebox/errors'

/** An object with `n` keys no schema knows (`0`, `1`, ... in base 36), each set to 0. Test-only. */
export const unknownKeys = (n: number): Record<string, number> => Object.fromEntries(Array.from({ length: n }, (_, i) => [i.toString(36), 0]))

/**
 * Runs `body` and counts the validation errors it pulled from TypeBox's error iterators (every
 * `Errors()`, a union's variants included), by wrapping their iterator while it runs. TypeBox yields
 * one error per bad value, so a caller that drains an iterator on a value with 100k unknown keys
 * pulls 100k. Test-only: it patches TypeBox's class for the duration of `body`.
 */
export async function countErrorPulls<T>(body: () => T | Promise<T>): Promise<{ value: T; pulled: number }> {
  const proto = ValueErrorIterator.prototype
  const original = proto[Symbol.iterator]
  let pulled = 0
  proto[Symbol.iterator] = function (this: ValueErrorIterator) {
    const inner = original.call(this)
    return {
      next: () => {
        const r = inner.next()
        if (!r.done) pulled++
        return r
      },
      return: (value?: unknown) => inner.return?.(value) ?? { done: true, value: undefined },
      [Symbol.iterator]() {
        return this
      },
    } as IterableIterator<never>
  }
  try {
    return { value: await body(), pulled }
  } finally {
    proto[Symbol.iterator] = original
  }
}
