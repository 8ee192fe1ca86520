import { describe, expect, test } from 'bun:test'
import { isEmojiToAdmit, isOneEmoji, repeatedOptionOf } from './live'

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

describe('isEmojiToAdmit', () => {
  test('what isOneEmoji passes, minus marks, stray joiners and tags no emoji has', () => {
    for (const s of [...one, '©', '❤︎', '1⃣', '🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}']) expect([s, isEmojiToAdmit(s)]).toEqual([s, true])
    for (const s of [...notOne, '👍\u0301', '👍\u200d', '👍\u{E0041}', '👍\u{1F3FD}\u0301']) expect([s, isEmojiToAdmit(s)]).toEqual([s, false])
    // isOneEmoji still passes them: reactions stored before the rule keep applying.
    expect(isOneEmoji('👍\u0301')).toBe(true)
  })
})

describe('repeatedOptionOf', () => {
  test('the same text once trimmed, in NFC, in any case: letters whose other case is longer or contextual too', () => {
    expect(repeatedOptionOf(['yes', 'no', ' Yes'])).toBe(2)
    expect(repeatedOptionOf(['Cafe\u0301', 'café'])).toBe(1)
    // ß upper-cases to SS, final ς and σ are one letter: toLowerCase alone keeps them apart.
    expect(repeatedOptionOf(['Straße', 'STRASSE'])).toBe(1)
    expect(repeatedOptionOf(['ΟΔΟΣ', 'οδοσ'])).toBe(1)
    expect(repeatedOptionOf(['yes', 'no', 'yes!'])).toBe(-1)
  })
})
