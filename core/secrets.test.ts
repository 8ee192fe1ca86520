import { describe, expect, test } from 'bun:test'
import { safeEqual, sameDigest, secretDigest } from './secrets'

describe('safeEqual', () => {
  test('compares whole strings of any length and content', () => {
    expect(safeEqual('abc', 'abc')).toBe(true)
    expect(safeEqual('abc', 'abd')).toBe(false)
    expect(safeEqual('abc', 'abcd')).toBe(false)
    expect(safeEqual('', '')).toBe(true)
    // Same UTF-16 length, different UTF-8 length: a plain timingSafeEqual on the bytes throws.
    expect(safeEqual('abcé', 'abcd')).toBe(false)
    expect(safeEqual('abc😀', 'abc😀')).toBe(true)
  })
})

describe('secretDigest + sameDigest', () => {
  test('a secret digested once matches the same candidates safeEqual does', () => {
    const known = secretDigest('abc😀')
    for (const candidate of ['abc😀', 'abc', 'abcd', '', 'abc😁']) expect(sameDigest(secretDigest(candidate), known)).toBe(safeEqual(candidate, 'abc😀'))
    expect(sameDigest(secretDigest('abc😀'), known)).toBe(true)
  })
})
