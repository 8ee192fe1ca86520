import { describe, expect, test } from 'bun:test'
import { admitData, checkData } from '.'
import { isEmojiToAdmit, isOneEmoji, optionKey, repeatedOptionOf } from './live'

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
  const repeat = (options: string[]) => repeatedOptionOf(options)?.index ?? -1
  test('the same text once trimmed, in NFC, in any case: letters whose other case is longer or contextual too', () => {
    expect(repeatedOptionOf(['yes', 'no', ' Yes'])).toEqual({ index: 2, earlier: 0 })
    expect(repeat(['Cafe\u0301', 'café'])).toBe(1)
    // ß upper-cases to SS, final ς and σ are one letter: toLowerCase alone keeps them apart.
    expect(repeat(['Straße', 'STRASSE'])).toBe(1)
    expect(repeat(['ΟΔΟΣ', 'οδοσ'])).toBe(1)
    expect(repeatedOptionOf(['yes', 'no', 'yes!'])).toBeUndefined()
  })

  test('characters that show as nothing (zero-width, soft hyphen, bidi marks) do not make another option', () => {
    for (const twin of ['Yes\u200b', 'Y\u00ades', '\u200eYes', 'Y\u2060es', '\ufeffYes\u3164']) expect([twin, repeat(['Yes', 'No', twin])]).toEqual([twin, 2])
    expect(repeat(['Yes', 'No', 'Yes?'])).toBe(-1)
  })

  test('compatibility forms are the letters they show: full-width, half-width, ligatures, superscripts, circled, in any case', () => {
    for (const [a, b] of [
      ['A', '\uff21'], // full-width Ａ
      ['a', '\uff21'], // and in another case
      ['Yes', '\uff39\uff45\uff53'], // Ｙｅｓ
      ['file', '\ufb01le'], // ﬁ ligature
      ['x2', 'x\u00b2'], // superscript two
      ['1', '\u2460'], // circled digit one
      ['カ', '\uff76'], // half-width katakana
      ['ǰ', 'J\u030c'], // a letter whose upper case decomposes
      ['Yes', '\u00a0Yes\u2003'], // no-break and em spaces trim
    ])
      expect([a, b, repeatedOptionOf([a, 'other', b])]).toEqual([a, b, { index: 2, earlier: 0 }])
    // Different letters stay different.
    expect(repeatedOptionOf(['A', 'Ä', 'Å', '\uff22'])).toBeUndefined()
  })

  test('optionKey is only for comparing: stable under itself', () => {
    for (const s of ['\uff21', 'Straße', '\ufb01le', 'ǰ', 'Cafe\u0301']) expect(optionKey(optionKey(s))).toBe(optionKey(s))
  })
})

describe('poll.opened: text a viewer cannot read is blank', () => {
  const poll = (question: string, options: string[]) => ({ stream: 'tv', poll: 'p1', question, options })
  test('a question or option of only spaces or zero-width characters is refused; stored ones still apply', () => {
    for (const blank of [' ', '\u200b', '\u200b\u200d', '\u3164', '\u00ad ']) {
      expect([blank, admitData('poll.opened', poll(blank, ['a', 'b']))]).toEqual([blank, [{ path: '/data/question', message: 'is blank' }]])
      expect([blank, admitData('poll.opened', poll('Which?', ['a', blank]))]).toEqual([blank, [{ path: '/data/options/1', message: 'is blank' }]])
      expect(checkData('poll.opened', poll(blank, ['a', blank]))).toEqual([])
    }
    expect(admitData('poll.opened', poll('Which?', ['👩\u200d👩\u200d👧', 'b']))).toEqual([])
  })
})

describe('chat messages and stream titles: text a viewer cannot read is blank', () => {
  test('a chat message, stream title or category of only spaces or zero-width characters is refused at the door; stored ones still apply', () => {
    // A message of one zero-width space was accepted and shown to the whole room as an empty line,
    // where a poll with such a question was refused.
    for (const blank of [' ', '\u200b', '\u200b\u200d', '\u3164', '\u00ad ', '\u202e']) {
      const message = { room: 'lobby', user: 'ann', text: blank }
      expect([blank, admitData('chat.message.posted', message)]).toEqual([blank, [{ path: '/data/text', message: 'is blank' }]])
      expect(checkData('chat.message.posted', message)).toEqual([])
      expect([blank, admitData('stream.started', { stream: 'tv', title: blank })]).toEqual([blank, [{ path: '/data/title', message: 'is blank' }]])
      expect([blank, admitData('stream.started', { stream: 'tv', title: 'Finals', category: blank })]).toEqual([blank, [{ path: '/data/category', message: 'is blank' }]])
      expect([blank, admitData('stream.updated', { stream: 'tv', title: blank })]).toEqual([blank, [{ path: '/data/title', message: 'is blank' }]])
      expect([blank, admitData('stream.updated', { stream: 'tv', category: blank })]).toEqual([blank, [{ path: '/data/category', message: 'is blank' }]])
      expect(checkData('stream.started', { stream: 'tv', title: blank })).toEqual([])
    }
    for (const text of ['gg', ' gg ', '👩\u200d👩\u200d👧', '\u202eevil']) expect(admitData('chat.message.posted', { room: 'lobby', user: 'ann', text })).toEqual([])
  })
})
