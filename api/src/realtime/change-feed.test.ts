import { describe, expect, test } from 'bun:test'
import { sequencesOf } from './change-feed'

describe('sequencesOf: a delivery\'s place in its stream, from its reply subject', () => {
  test('the v1 form (nats-server 2.9): $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<delivery seq>.<time>.<pending>', () => {
    expect(sequencesOf('$JS.ACK.CHANGES.c1.1.4123.17.1732800000000000000.0')).toEqual({ stream: 4123, delivery: 17 })
  })
  test('the v2 form, with domain and account hash, with or without the trailing random token', () => {
    expect(sequencesOf('$JS.ACK.hub.ACCHASH.CHANGES.c1.2.99.5.1732800000000000000.3.xYz12')).toEqual({ stream: 99, delivery: 5 })
    expect(sequencesOf('$JS.ACK.hub.ACCHASH.CHANGES.c1.2.99.5.1732800000000000000.3')).toEqual({ stream: 99, delivery: 5 })
  })
  test('anything else has no place', () => {
    expect(sequencesOf(undefined)).toBeUndefined()
    expect(sequencesOf('_INBOX.abc')).toBeUndefined()
    expect(sequencesOf('$JS.ACK.CHANGES.c1.1.4123')).toBeUndefined()
    expect(sequencesOf('$JS.ACK.hub.ACCHASH.CHANGES.c1.2.99.5.1732800000000000000')).toBeUndefined()
  })
  test('a sequence that is not a number reads as NaN (the delivery check then sees a hole)', () => {
    expect(sequencesOf('$JS.ACK.CHANGES.c1.1.41x3.17.1732800000000000000.0')).toEqual({ stream: Number.NaN, delivery: 17 })
    expect(sequencesOf('$JS.ACK.CHANGES.c1.1.4123..1732800000000000000.0')).toEqual({ stream: 4123, delivery: Number.NaN })
  })
})
