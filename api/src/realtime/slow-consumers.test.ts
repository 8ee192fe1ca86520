import { describe, expect, test } from 'bun:test'
import fc from 'fast-check'
import { CLOSE } from './close-codes'
import { createSlowConsumers } from './slow-consumers'

/**
 * A model of Bun's publish: every open member of a topic gets the frame; a member that reads
 * (`drains` bytes per publish, up to its kernel's share) keeps its queue small, a stalled one's
 * queue grows by the frame; the result is -1 while any member has a queue, else the frame's size.
 */
class Topic {
  queued = new Map<string, number>()
  closed = new Map<string, number>()
  checks = 0
  constructor(
    readonly ids: Set<string>,
    readonly drains: Map<string, number>,
  ) {
    for (const id of ids) this.queued.set(id, 0)
  }
  socket(id: string) {
    if (!this.ids.has(id)) return undefined
    return {
      readyState: this.closed.has(id) ? 3 : 1,
      getBufferedAmount: () => (this.checks++, this.queued.get(id)!),
      close: (code: number) => {
        this.closed.set(id, code)
        this.ids.delete(id) // Bun calls the close handler: the hub forgets the member
      },
    }
  }
  publish(bytes: number): number {
    let backpressure = false
    for (const id of this.ids) {
      const q = Math.max(0, this.queued.get(id)! + bytes - this.drains.get(id)!)
      this.queued.set(id, q)
      if (q > 0) backpressure = true
    }
    return backpressure ? -1 : bytes
  }
}

describe('slow consumers', () => {
  const limit = 64 * 1024
  const maxSubscriptions = 4

  test('a stalled member is closed with 4008 before its queue passes 1.5x the limit, whatever the frame sizes', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 300 }),
        fc.array(fc.nat({ max: 299 }), { minLength: 1, maxLength: 5 }),
        fc.array(fc.integer({ min: 1, max: 40_000 }), { minLength: 1, maxLength: 400 }),
        (n, stalled, frames) => {
          const ids = new Set(Array.from({ length: n }, (_, i) => `s${i}`))
          const drains = new Map([...ids].map((id, i) => [id, stalled.includes(i) ? 0 : 1e9]))
          const topic = new Topic(ids, drains)
          const slow = createSlowConsumers({ limit, maxSubscriptions, members: () => topic.ids, socket: (id) => topic.socket(id) })
          for (const size of frames) {
            const text = 'x'.repeat(size)
            slow.published('t', text, topic.publish(size))
            for (const [id, q] of topic.queued) {
              if (!topic.closed.has(id)) expect(q).toBeLessThanOrEqual(1.5 * limit + size)
            }
          }
          // Only stalled members are ever closed, and with the slow-consumer code.
          for (const [id, code] of topic.closed) {
            expect(code).toBe(CLOSE.SLOW_CONSUMER)
            expect(drains.get(id)).toBe(0)
          }
        },
      ),
      { seed: 14, numRuns: 200 },
    )
  })

  test('with one stalled member among 19,000, a publish checks a few members, not all of them', () => {
    const ids = new Set(Array.from({ length: 19_000 }, (_, i) => `s${i}`))
    const drains = new Map([...ids].map((id, i) => [id, i === 7 ? 0 : 1e9]))
    const topic = new Topic(ids, drains)
    const slow = createSlowConsumers({ limit: 1024 * 1024, maxSubscriptions: 100, members: () => topic.ids, socket: (id) => topic.socket(id) })
    const frame = 'x'.repeat(120)
    for (let i = 0; i < 1000; i++) slow.published('t', frame, topic.publish(frame.length))
    // 19,000 x 120 / 5,242 budget: ~435 checks per publish (was 19,000 each time).
    expect(topic.checks / 1000).toBeLessThan(500)
  })

  test('a topic without backpressure costs no check; a direct send that queues checks its socket', () => {
    const ids = new Set(['a', 'b'])
    const topic = new Topic(ids, new Map([['a', 1e9], ['b', 1e9]]))
    const slow = createSlowConsumers({ limit, maxSubscriptions, members: () => topic.ids, socket: (id) => topic.socket(id) })
    for (let i = 0; i < 100; i++) slow.published('t', 'x'.repeat(50_000), topic.publish(50_000))
    expect(topic.checks).toBe(0)
    topic.queued.set('a', limit + 1)
    slow.sent(topic.socket('a')!, -1)
    expect(topic.closed.get('a')).toBe(CLOSE.SLOW_CONSUMER)
  })
})
