import { expect, test } from 'bun:test'
import { countErrorPulls, unknownKeys } from '../../../core/testing/error-pulls'
import { errorBody, parseFrame } from './protocol'

test('a frame with 100k unknown keys gets invalid_frame with at most 10 problems, without draining the errors', async () => {
  const frame = JSON.stringify({ op: 'publish', ref: 'r1', event: { type: 'chat.message.posted', data: {}, ...unknownKeys(100_000) } })
  const { value: parsed, pulled } = await countErrorPulls(() => parseFrame(frame))
  expect(parsed).toMatchObject({ ok: false, ref: 'r1', error: { code: 'invalid_frame' } })
  const details = (parsed as { error: { details: unknown[] } }).error.details
  expect(details.length).toBeGreaterThan(0)
  expect(details.length).toBeLessThanOrEqual(10)
  expect(pulled).toBeLessThanOrEqual(10)
})

test('an unknown field in a frame, or in its event, is invalid_frame naming the field', () => {
  // A typo such as `sincee` would otherwise start from a snapshot while the client believes it resumed.
  expect(parseFrame(JSON.stringify({ op: 'subscribe', ref: 's1', channel: 'leaderboard:b', sincee: 4 }))).toEqual({
    ok: false,
    ref: 's1',
    error: { code: 'invalid_frame', message: 'unknown field /sincee in the subscribe frame', details: [{ path: '/sincee', message: 'unknown field' }] },
  })
  for (const op of ['unsubscribe', 'auth', 'publish'] as const) {
    const valid = { unsubscribe: { channel: 'chat:r' }, auth: { token: 't' }, publish: { event: { type: 'x', data: {} } } }[op]
    expect(parseFrame({ op, ...valid })).toMatchObject({ ok: true })
    expect(parseFrame({ op, ...valid, extra: true })).toMatchObject({ ok: false, error: { code: 'invalid_frame', details: [{ path: '/extra', message: 'unknown field' }] } })
  }
  expect(parseFrame({ op: 'publish', event: { type: 'x', data: {}, extra: 1 } })).toMatchObject({
    ok: false,
    error: { code: 'invalid_frame', message: 'unknown field /event/extra in the publish frame', details: [{ path: '/event/extra', message: 'unknown field' }] },
  })
})

test('parseFrame never throws: values nested past the limit, binary frames and huge ops get a bad_frame or unknown_op', () => {
  const deep = (n: number) => '['.repeat(n) + ']'.repeat(n)
  // 100k levels: echoing such an op (JSON.stringify) overflowed the stack and the frame got no answer.
  for (const text of [`{"op":${deep(100_000)}}`, `{"op":"publish","event":{"type":"x","data":{"a":${deep(100_000)}}}}`, `{"op":"subscribe","channel":"leaderboard:b","x":${deep(64)}}`]) {
    const parsed = parseFrame(JSON.parse(text))
    expect([text.slice(0, 30), parsed]).toEqual([text.slice(0, 30), { ok: false, error: { code: 'bad_frame', message: 'frames may nest at most 64 levels' } }])
  }
  expect(parseFrame({ op: 'subscribe', ref: 'r1', x: JSON.parse(deep(100_000)) })).toMatchObject({ ok: false, ref: 'r1', error: { code: 'bad_frame' } })
  expect(parseFrame(`{"op":${deep(63)}}`)).toMatchObject({ ok: false, error: { code: 'unknown_op', message: 'unknown op (an array); expected auth, publish, subscribe, unsubscribe or ping' } })
  const long = parseFrame({ op: 'x'.repeat(100_000) })
  expect(long).toMatchObject({ ok: false, error: { code: 'unknown_op' } })
  expect((long as { error: { message: string } }).error.message.length).toBeLessThan(200)
  for (const binary of [new Uint8Array([0xff, 0x00]), Buffer.from('{"op":"unsubscribe","channel":"leaderboard:b"}'), new ArrayBuffer(4)]) {
    expect(parseFrame(binary)).toEqual({ ok: false, error: { code: 'bad_frame', message: 'frames must be JSON text frames, not binary' } })
  }
})

test('errorBody: a database error a retry may cure is database_unavailable, as REST answers it; others stay internal', () => {
  // postgres.js puts the SQLSTATE in `code`; drizzle wraps it in `cause`.
  const noConnection = Object.assign(new Error('Failed query: select ...'), { cause: Object.assign(new Error('sorry, too many clients already'), { code: '53300' }) })
  expect(errorBody(noConnection)).toEqual({ code: 'database_unavailable', message: 'the database has no connection free (max_connections reached); retry shortly' })
  expect(errorBody(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })).code).toBe('database_unavailable')
  expect(errorBody(new TypeError('x is undefined'))).toEqual({ code: 'internal', message: 'internal error' })
})

test('a channel that is none of the kinds is invalid_frame saying which channels there are, not quoting the pattern', () => {
  // The first thing a new client gets wrong (`leaderboards:`, `room:`, presence of a board): the
  // pattern quoted back ("Expected string to match '^(?:(?:leaderboard|chat|...") told them nothing.
  for (const op of ['subscribe', 'unsubscribe'] as const) {
    for (const channel of ['leaderboards:arena', 'room:lobby', 'presence:leaderboard:arena', 'chat:a b']) {
      const parsed = parseFrame({ op, ref: 's1', channel })
      expect(parsed).toMatchObject({ ok: false, ref: 's1', error: { code: 'invalid_frame', details: [{ path: '/channel' }] } })
      const { message } = (parsed as { error: { message: string } }).error
      expect(message).toStartWith('channel must be leaderboard:<board>, chat:<room>, stream:<stream>, poll:<poll>, reactions:<stream> or match:<match>')
      expect(message).toContain('presence:')
      expect(message).not.toContain('^')
    }
  }
  // Other problems keep their message.
  expect(parseFrame({ op: 'subscribe', channel: 'chat:r', since: -1 })).toMatchObject({ ok: false, error: { code: 'invalid_frame', message: 'malformed subscribe frame' } })
  expect(parseFrame({ op: 'subscribe', channel: 'chat:r', sinse: 1 })).toMatchObject({ ok: false, error: { message: 'unknown field /sinse in the subscribe frame' } })
})

test('a frame missing a field gets one problem for it, saying it is required, not a second about the value it lacks', () => {
  expect(parseFrame({ op: 'auth', ref: 'a1' })).toMatchObject({ ok: false, error: { code: 'invalid_frame', details: [{ path: '/token', message: 'is required' }] } })
  expect(parseFrame({ op: 'publish', ref: 'p1' })).toMatchObject({ ok: false, error: { code: 'invalid_frame', details: [{ path: '/event', message: 'is required' }] } })
  const sub = parseFrame({ op: 'subscribe', ref: 's1' }) as { ok: false; error: { details: { path: string; message: string }[] } }
  expect(sub.error.details).toEqual([{ path: '/channel', message: 'is required' }])
})
