import { describe, expect, test } from 'bun:test'
import { HOLD_GRACE_MS, heldBack, holdAfterUnavailable, type PublishHold } from './publish-order'

const refusal = { code: 'rate_limited' as const, message: 'at most 5 events per second per connection (burst 5)', retryAfterMs: 200, perSecond: 5 }

describe('publishes wait behind one refused for its rate', () => {
  const hold: PublishHold = { id: 'e6', n: 6, retryAt: 1200, refusal }

  test('no hold: anything may go', () => {
    expect(heldBack(undefined, 'e7', 0)).toBeUndefined()
  })

  test('later events are refused until the refused one is sent again, with the wait until it may be', () => {
    expect(heldBack(hold, 'e7', 1000)).toMatchObject({ code: 'rate_limited', retryAfterMs: 200, perSecond: 5 })
    expect(heldBack(hold, 'e7', 1000)!.message).toContain('(e6) was refused for its rate')
    // Past its retry time the others still wait for it (it may be on its way)...
    expect(heldBack(hold, 'e8', 1300)).toMatchObject({ retryAfterMs: 1 })
    // ...and the refused event itself goes, whenever it comes.
    expect(heldBack(hold, 'e6', 1000)).toBeUndefined()
    expect(heldBack(hold, 'e6', 1300)).toBeUndefined()
  })

  test('a refused event never sent again holds the others for HOLD_GRACE_MS past its retry time', () => {
    expect(heldBack(hold, 'e7', 1200 + HOLD_GRACE_MS - 1)).toBeDefined()
    expect(heldBack(hold, 'e7', 1200 + HOLD_GRACE_MS)).toBeUndefined()
  })

  test('an event without an id cannot be sent again as itself: its hold ends at its retry time', () => {
    const anonymous: PublishHold = { id: undefined, n: 6, retryAt: 1200, refusal }
    expect(heldBack(anonymous, 'e7', 1100)).toMatchObject({ retryAfterMs: 100 })
    expect(heldBack(anonymous, undefined, 1100)).toBeDefined()
    expect(heldBack(anonymous, 'e7', 1200)).toBeUndefined()
  })
})

describe('publishes wait behind one answered 503', () => {
  const overloaded = { code: 'overloaded', message: 'too many events waiting for the event stream', retryAfterMs: 1000 }

  test('later events are refused with its code, naming it, and it goes whenever it comes', () => {
    const hold = holdAfterUnavailable(undefined, { id: 'e6', n: 6, retryAt: 2000 }, overloaded)
    const held = heldBack(hold, 'e7', 1500)!
    expect([held.code, held.retryAfterMs, 'perSecond' in held]).toEqual(['overloaded', 500, false])
    expect(held.message).toContain('(e6) was refused (overloaded)')
    expect(heldBack(hold, 'e6', 1500)).toBeUndefined()
  })

  test('the hold stays behind the earliest refused frame, whichever 503 is answered first', () => {
    const rate: PublishHold = { id: 'e8', n: 8, retryAt: 1200, refusal }
    // Frame 6 answered 503 after frame 8 was refused for its rate: 6 goes first.
    expect(holdAfterUnavailable(rate, { id: 'e6', n: 6, retryAt: 2000 }, overloaded)).toMatchObject({ id: 'e6', n: 6 })
    // Frames 6 and 7 both answered 503, 6 first: the hold stays behind 6.
    const six = holdAfterUnavailable(undefined, { id: 'e6', n: 6, retryAt: 2000 }, overloaded)
    expect(holdAfterUnavailable(six, { id: 'e7', n: 7, retryAt: 2000 }, overloaded)).toBe(six)
  })

  test('publish_denied holds nothing back: that event is not sent again until an operator acts', () => {
    const denied = { code: 'publish_denied', message: 'NATS does not let this connection publish to x', retryAfterMs: 1000 }
    expect(holdAfterUnavailable(undefined, { id: 'e6', n: 6, retryAt: 2000 }, denied)).toBeUndefined()
    const rate: PublishHold = { id: 'e8', n: 8, retryAt: 1200, refusal }
    expect(holdAfterUnavailable(rate, { id: 'e6', n: 6, retryAt: 2000 }, denied)).toBe(rate)
  })
})
