import { describe, expect, test } from 'bun:test'
import { createPartSize, type PartSize } from './part-size'

/** What Postgres throws for statement_timeout (Bun's SQL client: the SQLSTATE in `errno`). */
const canceled = Object.assign(new Error('canceling statement due to statement timeout'), { errno: '57014' })
const refused = Object.assign(new Error('deadlock detected'), { errno: '40P01' })

/**
 * Applies `batches` batches of `size` messages as a runner does, against a database that cancels
 * every statement of more than `fits` messages. Returns the timeouts of each batch and the sizes
 * of the statements that committed.
 */
function run(sizes: PartSize, opts: { batches: number; size: number; fits: () => number }) {
  const timeouts: number[] = []
  const committed: number[] = []
  for (let b = 0; b < opts.batches; b++) {
    let n = 0
    for (let rest = opts.size; rest > 0; ) {
      const part = sizes.next(rest)
      expect(part).toBeGreaterThanOrEqual(1)
      expect(part).toBeLessThanOrEqual(rest)
      if (part > opts.fits()) {
        n++
        sizes.failed(canceled, part)
        continue
      }
      sizes.committed(part)
      committed.push(part)
      rest -= part
    }
    timeouts.push(n)
  }
  return { timeouts, committed }
}

describe('PartSize', () => {
  test('no limit until a statement is canceled twice in a row; then halves, down to one event', () => {
    const sizes = createPartSize()
    expect(sizes.next(500)).toBe(500)
    expect(sizes.failed(canceled, 500)).toBe('again')
    expect(sizes.next(500)).toBe(500)
    expect(sizes.failed(canceled, 500)).toBe('split')
    expect(sizes.next(500)).toBe(250)
    // Another error in between: the timeouts in a row start over.
    expect(sizes.failed(canceled, 250)).toBe('again')
    expect(sizes.failed(refused, 250)).toBeUndefined()
    expect(sizes.failed(canceled, 250)).toBe('again')
    expect(sizes.failed(canceled, 250)).toBe('split')
    expect(sizes.next(500)).toBe(125)
    // One event alone is never split to nothing: retried, and the caller told it is stalled.
    for (let size = 125; size > 1; size = sizes.next(size)) {
      sizes.failed(canceled, size)
      sizes.failed(canceled, size)
    }
    expect(sizes.next(500)).toBe(1)
    expect(sizes.failed(canceled, 1)).toBe('again')
    expect(sizes.failed(canceled, 1)).toBe('alone')
    expect(sizes.next(500)).toBe(1)
  })

  test('the size that fits is kept from batch to batch: after the first batch, only the rare probes of a bigger size are canceled', () => {
    const { timeouts, committed } = run(createPartSize(), { batches: 10, size: 500, fits: () => 60 })
    // 500, 250, 125 canceled twice each, then 63 (too big by 3), then 32 fits. Learned again by
    // each batch, that would be 8 per batch (72 in the 9 after the first).
    expect(timeouts[0]).toBe(8)
    // After it, only the probes of a bigger size: 2 timeouts per 32 statements at the limit.
    const later = timeouts.slice(1)
    expect(later.every((n) => n <= 2)).toBe(true)
    const statements = committed.length
    expect(later.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(2 * Math.ceil(statements / 32))
    expect(committed.reduce((a, b) => a + b, 0)).toBe(10 * 500)
  })

  test('grows back slowly: doubles after 32 statements at the limit, a probe that is canceled halves it back', () => {
    const sizes = createPartSize()
    let fits = 60
    const first = run(sizes, { batches: 1, size: 500, fits: () => fits })
    expect(sizes.next(500)).toBe(32)
    // 31 more statements at 32 (the first batch committed 15 of them): still 32.
    run(sizes, { batches: 1, size: 32 * 16, fits: () => fits })
    expect(sizes.next(500)).toBe(32)
    // The 32nd: 64 is tried, canceled twice (it does not fit), and 32 is back.
    const probe = run(sizes, { batches: 1, size: 32 + 64 + 32, fits: () => fits })
    expect(probe.timeouts).toEqual([2])
    expect(sizes.next(500)).toBe(32)
    // statement_timeout raised: the limit keeps doubling until whole batches go again.
    fits = Infinity
    const after = run(sizes, { batches: 100, size: 500, fits: () => fits })
    expect(after.timeouts.every((n) => n === 0)).toBe(true)
    expect(sizes.next(500)).toBe(500)
    expect(first.timeouts).toEqual([8])
  })

  test('as the group committer uses it: halves at the first timeout, and grows from statements the limit held back, whatever their size', () => {
    const sizes = createPartSize(undefined, 1)
    expect(sizes.failed(canceled, 60)).toBe('split')
    expect(sizes.next(60)).toBe(30)
    expect(sizes.failed(canceled, 30)).toBe('split')
    expect(sizes.next(60)).toBe(15)
    // Batches of 10: a group of two (20) does not fit the limit, so each goes alone, below it.
    // Held back (20 events were there to take), each that commits says the limit fits.
    for (let i = 0; i < 31; i++) sizes.committed(10, 20)
    expect(sizes.next(60)).toBe(15)
    // Not held back (one batch was all there was): says nothing about the limit.
    for (let i = 0; i < 100; i++) sizes.committed(10, 10)
    expect(sizes.next(60)).toBe(15)
    sizes.committed(10, 20)
    expect(sizes.next(60)).toBe(30)
  })
})
