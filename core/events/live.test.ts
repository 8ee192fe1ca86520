import { describe, expect, test } from 'bun:test'
import { isOneEmoji } from './live'

const one = ['👏', '❤', '❤️', '🇫🇷', '1️⃣', '#️⃣', '👍🏽', '👩‍👩‍👧', '🏳️‍🌈']
const notOne = ['👏👏', 'hi', 'a', '🇫🇷a', 'a👏', '1', '', ' 👏', '🇫']

describe('isOneEmoji', () => {
  test('one emoji grapheme of any kind, and nothing else', () => {
    for (const s of one) expect([s, isOneEmoji(s)]).toEqual([s, true])
    for (const s of notOne) expect([s, isOneEmoji(s)]).toEqual([s, false])
  })

  test('answers the same when asked again, and after the memo of recent answers filled up and started over', () => {
    for (let round = 0; round < 2; round++) {
      for (const s of one) expect(isOneEmoji(s)).toBe(true)
      for (const s of notOne) expect(isOneEmoji(s)).toBe(false)
      for (let i = 0; i < 5000; i++) isOneEmoji(`x${i}`)
    }
  })
})
