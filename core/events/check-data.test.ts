import { expect, test } from 'bun:test'
import { countErrorPulls, unknownKeys } from '../testing/error-pulls'
import type { TSchema } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { checkData, contracts, decodeEvent } from '.'

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
