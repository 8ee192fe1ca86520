import { expect, test } from 'bun:test'
import { countErrorPulls, unknownKeys } from '../testing/error-pulls'
import type { TSchema } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { admitData, checkData, contracts, decodeEvent } from '.'

test('checkData reports at most 10 problems and pulls no more errors than that (100k unknown keys)', async () => {
  const data = { board: 'main', player: 'p', score: 1, ...unknownKeys(100_000) }
  const { value: problems, pulled } = await countErrorPulls(() => checkData('score.submitted', data))
  expect(problems).toHaveLength(10)
  expect(problems[0]).toEqual({ path: expect.stringMatching(/^\/data\//), message: expect.any(String) })
  expect(pulled).toBeLessThanOrEqual(10)
})

test('poll.opened with closesAt validates in a process that never loaded Elysia (the workers): the contract needs no format registry', async () => {
  // Elysia registers TypeBox's `date-time` format on import; a stream worker does not load it, so a
  // contract relying on that format would dead-letter every such event there. A fresh process shows it.
  const script = `
    const { checkData } = await import(${JSON.stringify(`${import.meta.dir}/index.ts`)})
    const data = { stream: 'tv', poll: 'p1', question: 'Which?', options: ['a', 'b'], closesAt: '2030-01-02T03:04:05.678Z' }
    console.log(JSON.stringify([checkData('poll.opened', data), checkData('poll.opened', { ...data, closesAt: 'tomorrow' }).length]))`
  const proc = Bun.spawn([process.execPath, '-e', script], { stdout: 'pipe', stderr: 'pipe' })
  const out = await new Response(proc.stdout).text()
  expect(await proc.exited).toBe(0)
  expect(JSON.parse(out)).toEqual([[], 1])
})

/** Every string schema inside `schema` (object properties, record values, array items, unions), with where it is. */
function stringSchemas(schema: TSchema, path = ''): { path: string; schema: TSchema }[] {
  const s = schema as TSchema & { properties?: Record<string, TSchema>; patternProperties?: Record<string, TSchema>; items?: TSchema; anyOf?: TSchema[] }
  if (s.type === 'string') return [{ path, schema: s }]
  return [
    ...Object.entries(s.properties ?? {}).flatMap(([k, v]) => stringSchemas(v, `${path}/${k}`)),
    ...Object.values(s.patternProperties ?? {}).flatMap((v) => stringSchemas(v, `${path}/<name>`)),
    ...(s.items ? stringSchemas(s.items, `${path}/<item>`) : []),
    ...(s.anyOf ?? []).flatMap((v) => stringSchemas(v, path)),
  ]
}

test('no event contract accepts a string Postgres cannot store (NUL, lone surrogate): such an event would be acknowledged, then stop the workers', () => {
  // Postgres text and jsonb refuse U+0000, and jsonb a lone surrogate: a worker's statement then
  // fails with a data error, which no retry fixes. The contract must refuse it at the door.
  const storable: string[] = []
  for (const [type, c] of Object.entries(contracts)) {
    for (const { path, schema } of stringSchemas(c.schema)) {
      const check = TypeCompiler.Compile(schema)
      for (const [what, value] of [['NUL', 'a\u0000b'], ['a lone surrogate', 'a\uD800b']]) {
        // Emoji is one grapheme by the contract's own check, which refuses both.
        if (check.Check(value) && !(type === 'reaction.sent' && path === '/emoji') && !(type === 'reaction.batched' && path.endsWith('/emoji'))) storable.push(`${type} ${path} accepts ${what}`)
      }
    }
  }
  expect(storable).toEqual([])
})

test('match.created with a NUL or a lone surrogate in a property value is refused (and so dead-lettered by a worker, not applied)', () => {
  const data = (map: string) => ({ match: 'm1', mode: 'duel', maxPlayers: 2, properties: { map } })
  expect(checkData('match.created', data('dust'))).toEqual([])
  expect(checkData('match.created', data('a\u0000b'))[0]?.path).toBe('/data/properties/map')
  expect(checkData('match.created', data('a\uD800b'))[0]?.path).toBe('/data/properties/map')
  const stored = JSON.stringify({ id: 'e1', by: 'ingest', type: 'match.created', v: 1, data: data('a\u0000b'), at: '2026-01-01T00:00:00Z' })
  expect(decodeEvent(stored)).toEqual({ ok: false, reason: expect.stringContaining('/data/properties/map') })
})

test('poll.opened closesAt must name a real instant Postgres can store: no Feb 30, no 24:00, years 1-9999 in UTC', () => {
  const data = (closesAt: string) => ({ stream: 'tv', poll: 'p1', question: 'Which?', options: ['a', 'b'], closesAt })
  // Year 0 (or 10000 once the offset is applied) passed Date.parse, was acked, and stopped the
  // workers (Postgres: date/time field value out of range); Feb 30 was rolled over to March 2.
  for (const bad of ['0000-01-01T00:00:00Z', '9999-12-31T23:59:59-14:00', '2030-02-30T00:00:00Z', '2031-02-29T00:00:00Z', '2030-01-01T24:00:00Z', '2030-13-01T00:00:00Z', '2030-01-01T00:00:00+24:00']) {
    expect([bad, checkData('poll.opened', data(bad))]).toEqual([bad, [{ path: '/data/closesAt', message: expect.any(String) }]])
  }
  for (const good of ['2030-01-02T03:04:05Z', '2032-02-29T00:00:00Z', '2030-01-02T03:04:05.678901234+02:00', '9999-12-31T23:59:59Z', '0001-01-01T00:00:00Z', '0000-12-31T23:00:00-02:00']) {
    expect([good, checkData('poll.opened', data(good))]).toEqual([good, []])
  }
  const stored = JSON.stringify({ id: 'e1', by: 'ingest', type: 'poll.opened', v: 1, data: data('0000-01-01T00:00:00Z'), at: '2026-01-01T00:00:00Z' })
  expect(decodeEvent(stored)).toEqual({ ok: false, reason: expect.stringContaining('/data/closesAt') })
})

test('every string of every event contract that has a pattern says its rule in words: problems and dead-letter reasons never quote a regex', () => {
  const quoting: string[] = []
  for (const [type, c] of Object.entries(contracts)) {
    for (const { path, schema } of stringSchemas(c.schema)) {
      if ('pattern' in schema && typeof (schema as { error?: unknown }).error !== 'string') quoting.push(`${type} ${path}`)
    }
  }
  expect(quoting).toEqual([])
  const rule = 'must be 1-64 characters, each a letter (A-Z, a-z), a digit, _ or -'
  expect(checkData('score.submitted', { board: 'bad.name', player: 'p', score: 1 })).toEqual([{ path: '/data/board', message: rule }])
  const stored = JSON.stringify({ id: 'e1', by: 'ingest', type: 'score.submitted', v: 1, data: { board: 'bad.name', player: 'p', score: 1 }, at: '2026-01-01T00:00:00Z' })
  expect(decodeEvent(stored)).toEqual({ ok: false, reason: `invalid data: /data/board ${rule}` })
  // What is accepted is unchanged.
  expect(checkData('score.submitted', { board: 'Ok_name-1', player: 'p@x.y', score: 1 })).toEqual([])
})

test('match property names outside the rule (empty, a dot, a space, past 64 characters) are refused where the API admits an event, with the rule in words and the name in the path; values under them are never let through unchecked', () => {
  const data = (properties: Record<string, unknown>) => ({ match: 'm1', mode: 'duel', maxPlayers: 2, properties })
  const rule = 'property names must be 1-64 characters, each a letter (A-Z, a-z), a digit, _ or -'
  // The schema's key pattern checks only the values of keys that match it: these passed with any value.
  for (const [name, path] of [['', '/data/properties/'], ['a.b', '/data/properties/a.b'], ['with space', '/data/properties/with space'], ['k'.repeat(65), `/data/properties/${'k'.repeat(65)}`], ['a/b~', '/data/properties/a~1b~0']]) {
    expect([name, admitData('match.created', data({ map: 'dust', [name]: { nested: ['anything'] } }))]).toEqual([name, [{ path, message: rule }]])
  }
  expect(admitData('match.created', data({ map: 'dust', ['k'.repeat(64)]: 1, 'A_b-9': true }))).toEqual([])
})

test('a match property value of no allowed kind says what is allowed (not "Expected union value"), as does a value outside a union of literals', () => {
  const message = 'must be text of at most 200 characters (no NUL, nor an unpaired surrogate), a number within ±1e15, or true or false'
  for (const value of [{ b: 1 }, null, 1e300, 'x'.repeat(201), ['a']]) {
    expect(checkData('match.created', { match: 'm1', mode: 'duel', maxPlayers: 2, properties: { map: value } })).toEqual([{ path: '/data/properties/map', message }])
  }
  expect(checkData('match.leave', { match: 'm1', reason: 'bogus' })).toEqual([{ path: '/data/reason', message: 'must be one of "left", "disconnected", "revoked"' }])
  // Every union in an event contract says its rule itself, or is one of literals.
  const unions = (schema: TSchema, path: string): string[] => {
    const s = schema as TSchema & { properties?: Record<string, TSchema>; patternProperties?: Record<string, TSchema>; items?: TSchema; anyOf?: TSchema[]; error?: unknown }
    const here = s.anyOf && typeof s.error !== 'string' && !s.anyOf.every((v) => 'const' in v) ? [path] : []
    return [
      ...here,
      ...Object.entries(s.properties ?? {}).flatMap(([k, v]) => unions(v, `${path}/${k}`)),
      ...Object.values(s.patternProperties ?? {}).flatMap((v) => unions(v, `${path}/*`)),
      ...(s.items ? unions(s.items, `${path}/0`) : []),
      ...(s.anyOf ?? []).flatMap((v) => unions(v, path)),
    ]
  }
  expect(Object.entries(contracts).flatMap(([type, c]) => unions(c.schema, type))).toEqual([])
})

test('anything but one emoji in a reaction is refused as "must be one emoji", whatever rule it breaks (empty, too long, not a string), as the README says', () => {
  // An empty or over-long emoji was worded by TypeBox ("Expected string length greater or equal
  // to 1"), unlike every other refused emoji.
  for (const emoji of ['', '👏'.repeat(20), 5, '👏👏']) {
    expect([emoji, admitData('reaction.sent', { stream: 'main', emoji })]).toEqual([emoji, [{ path: '/data/emoji', message: 'must be one emoji' }]])
  }
  const batched = (emoji: unknown) => ({ stream: 'main', dedupWindowMs: 1000, reactions: [{ id: 'r1', by: 'u:ann', emoji }] })
  expect(checkData('reaction.batched', batched(''))).toEqual([{ path: '/data/reactions/0/emoji', message: 'must be one emoji' }])
})

test('a missing field of an event is one problem saying it is required (and what it must be), not a second one about the value it lacks', () => {
  // TypeBox reports a missing property, then checks `undefined` against the property's type: the
  // client got `Expected required property` and `must be 1-64 characters, ...` (or `Expected
  // string`) for the one field it left out.
  expect(checkData('chat.message.posted', { user: 'ann', text: 'x' })).toEqual([{ path: '/data/room', message: 'is required and must be 1-64 characters, each a letter (A-Z, a-z), a digit, _ or -' }])
  expect(checkData('poll.voted', { poll: 'p' })).toEqual([{ path: '/data/option', message: 'is required' }])
  expect(admitData('reaction.sent', { stream: 's' })).toEqual([{ path: '/data/emoji', message: 'is required and must be one emoji' }])
  expect(checkData('poll.opened', { stream: 's', poll: 'p' })).toEqual([
    { path: '/data/question', message: 'is required and must be 1-280 characters with no control characters (nor an unpaired surrogate)' },
    { path: '/data/options', message: 'is required' },
  ])
})
