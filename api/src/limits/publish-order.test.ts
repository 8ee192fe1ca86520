import { describe, expect, test } from 'bun:test'
import { HOLD_GRACE_MS, heldBack, type PublishHold } from './publish-order'

const refusal = { code: 'rate_limited' as const, message: 'at most 5 events per second per connection (burst 5)', retryAfterMs: 200, perSecond: 5 }

describe('publishes wait behind one refused for its rate', () => {
  const hold: PublishHold = { id: 'e6', retryAt: 1200, refusal }

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
    const anonymous: PublishHold = { id: undefined, retryAt: 1200, refusal }
    expect(heldBack(anonymous, 'e7', 1100)).toMatchObject({ retryAfterMs: 100 })
    expect(heldBack(anonymous, undefined, 1100)).toBeDefined()
    expect(heldBack(anonymous, 'e7', 1200)).toBeUndefined()
  })
})
