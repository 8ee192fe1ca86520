import { expect, test } from 'bun:test'
import { countErrorPulls, unknownKeys } from '../../../core/testing/error-pulls'
import { parseFrame } from './protocol'

test('a frame with 100k unknown keys gets invalid_frame with at most 10 problems, without draining the errors', async () => {
  const frame = JSON.stringify({ op: 'publish', ref: 'r1', event: { type: 'chat.message.posted', data: {}, ...unknownKeys(100_000) } })
  const { value: parsed, pulled } = await countErrorPulls(() => parseFrame(frame))
  expect(parsed).toMatchObject({ ok: false, ref: 'r1', error: { code: 'invalid_frame' } })
  const details = (parsed as { error: { details: unknown[] } }).error.details
  expect(details.length).toBeGreaterThan(0)
  expect(details.length).toBeLessThanOrEqual(10)
  expect(pulled).toBeLessThanOrEqual(10)
})
