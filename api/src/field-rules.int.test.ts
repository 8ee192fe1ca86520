import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { WsClient } from '../../test/e2e/harness'
import { mintUserToken } from './auth/mint'
import { startTestNode, type TestNode } from './test-support'

/**
 * Bad input in a name-like field (a board, room, player, event id, channel...) is answered with
 * what the field allows, in words: the top message names the field and its rule, every detail's
 * message says the rule, and none quotes the schema's pattern ("Expected string to match '^...'",
 * which a client developer cannot act on). What is accepted is not changed.
 */
const NAME_RULE = 'must be 1-64 characters, each a letter (A-Z, a-z), a digit, _ or -'
const USER_RULE = 'must be 1-128 characters with no spaces or other whitespace (nor NUL or an unpaired surrogate)'
const EVENT_ID_RULE = 'must be 1-128 characters, each a letter (A-Z, a-z), a digit, _, ., :, @ or -'

/** Whether a message reads like a pattern quoted back rather than words. */
const quotesPattern = (message: string) => /Expected string|\^|\$|\{1,|\\[su]|\[A-Z/.test(message)

describe('name-like fields say what they allow, in words', () => {
  let node: TestNode
  const tokenFor = (path: string) => (path.startsWith('/admin') || path === '/metrics' ? node.env.vars.FANFARE_ADMIN_TOKEN : node.env.vars.FANFARE_INGEST_TOKEN)
  const call = async (method: string, path: string, body?: unknown) => {
    const headers: Record<string, string> = { authorization: `Bearer ${tokenFor(path)}` }
    if (body !== undefined) headers['content-type'] = 'application/json'
    const r = await fetch(`${node.base}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
    return { status: r.status, json: (await r.json()) as any }
  }

  beforeAll(async () => {
    node = await startTestNode()
  })
  afterAll(async () => {
    await node?.close()
  })

  test('REST path parameters: GET /v1/leaderboards/bad.name names the rule of board, not its pattern', async () => {
    const r = await call('GET', '/v1/leaderboards/bad.name')
    expect(r.status).toBe(422)
    expect(r.json.error).toEqual({
      code: 'invalid_request',
      message: `board ${NAME_RULE}`,
      details: [{ path: '/board', message: NAME_RULE, in: 'params' }],
    })
    const player = await call('GET', '/v1/leaderboards/arena/players/a%20b')
    expect([player.status, player.json.error.message, player.json.error.details]).toEqual([422, `player ${USER_RULE}`, [{ path: '/player', message: USER_RULE, in: 'params' }]])
    // A valid name is still taken (an unknown board is an empty one, not a 422).
    expect((await call('GET', '/v1/leaderboards/Ok_name-1')).status).toBe(200)
  })

  test('every path and query parameter with a pattern answers a bad value with its rule in words', async () => {
    const doc = (await call('GET', '/docs/json')).json
    // A body each route with one takes, so the parameter is the only problem.
    const bodies: Record<string, unknown> = {
      'PUT /admin/leaderboards/{board}': { order: 'asc' },
      'PUT /admin/rooms/{room}': { visibility: 'private' },
      'PUT /admin/modes/{mode}': { board: 'arena' },
    }
    const swept: string[] = []
    for (const [path, ops] of Object.entries<any>(doc.paths)) {
      for (const [method, op] of Object.entries<any>(ops)) {
        const route = `${method.toUpperCase()} ${path}`
        for (const param of (op.parameters ?? []) as any[]) {
          if (!['path', 'query'].includes(param.in) || !JSON.stringify(param.schema ?? {}).includes('"pattern"')) continue
          // A space and a dot: no name, id, channel or number of the API takes them.
          const bad = 'a%20b.c'
          const url =
            path.replace(/\{(\w+)\}/g, (_, name) => (name === param.name ? bad : JSON.stringify(op.parameters.find((p: any) => p.name === name)?.schema ?? {}).includes('"integer"') ? '1' : 'x')) +
            (param.in === 'query' ? `?${param.name}=${bad}` : '')
          const where = `${route} ${param.in} ${param.name}`
          swept.push(where)
          const r = await call(method.toUpperCase(), url, bodies[route])
          expect([where, r.status, r.json.error?.code]).toEqual([where, 422, 'invalid_request'])
          const { message, details } = r.json.error
          expect([where, message]).toEqual([where, expect.stringMatching(new RegExp(`^${param.name} (must|is)`))])
          expect([where, quotesPattern(message)]).toEqual([where, false])
          const mine = (details as { path: string; message: string }[]).filter((d) => d.path === `/${param.name}`)
          expect([where, mine.length > 0]).toEqual([where, true])
          for (const d of details) expect([where, d.message, quotesPattern(d.message)]).toEqual([where, d.message, false])
        }
      }
    }
    // The sweep reached the shared types: a board, a player, a room's message id, a user, a key.
    for (const reached of [
      'GET /v1/leaderboards/{board} path board',
      'GET /v1/leaderboards/{board}/players/{player} path player',
      'DELETE /admin/rooms/{room}/messages/{id} path id',
      'GET /v1/rooms/{room}/messages query before',
      'DELETE /admin/keys/{id} path id',
    ]) {
      expect(swept).toContain(reached)
    }
  })

  test('REST bodies: a route body and an event body name the field and its rule', async () => {
    const mode = await call('PUT', '/admin/modes/arena', { board: 'bad.name' })
    expect([mode.status, mode.json.error]).toEqual([422, { code: 'invalid_request', message: `board ${NAME_RULE}`, details: [{ path: '/board', message: NAME_RULE, in: 'body' }] }])

    const revoke = await call('POST', '/admin/users/revoke', { user: 'a b' })
    expect([revoke.status, revoke.json.error.message, revoke.json.error.details]).toEqual([422, `user ${USER_RULE}`, [{ path: '/user', message: USER_RULE, in: 'body' }]])

    const score = await call('POST', '/v1/events', { type: 'score.submitted', data: { board: 'bad.name', player: 'p', score: 1 } })
    expect([score.status, score.json.error]).toEqual([
      422,
      {
        code: 'invalid_event',
        message: `event data does not match its type (event 0: /data/board ${NAME_RULE})`,
        details: [{ index: 0, path: '/data/board', message: NAME_RULE }],
      },
    ])
    // The envelope is the route's body (one event, or a batch: a union): its id's rule, not "body must be one event ...".
    const id = await call('POST', '/v1/events', { id: 'a b', type: 'score.submitted', data: { board: 'b', player: 'p', score: 1 } })
    expect([id.status, id.json.error]).toEqual([422, { code: 'invalid_request', message: `id ${EVENT_ID_RULE}`, details: [{ path: '/id', message: EVENT_ID_RULE, in: 'body' }] }])
    // An empty id fails its length and its pattern: one rule, said once; likewise an empty board.
    const empty = await call('POST', '/v1/events', { id: '', type: 'score.submitted', data: { board: '', player: 'p', score: 1 } })
    expect(empty.json.error.details).toEqual([{ path: '/id', message: EVENT_ID_RULE, in: 'body' }])
    const emptyBoard = await call('POST', '/v1/events', { type: 'score.submitted', data: { board: '', player: 'p', score: 1 } })
    expect(emptyBoard.json.error.details).toEqual([{ index: 0, path: '/data/board', message: NAME_RULE }])
    expect(await node.streamCount()).toBe(0)
  })

  test('WebSocket frames: a publish with a bad event id or board, and a subscribe to a bad channel, get the rule in words', async () => {
    const ws = await WsClient.open(`${node.wsUrl}?token=${await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub: 'player-1' })}`)
    try {
      ws.send({ op: 'publish', ref: 'id', event: { id: 'a b', type: 'match.join', data: { match: 'm1' } } })
      expect((await ws.reply('id')).error).toEqual({ code: 'invalid_frame', message: `id ${EVENT_ID_RULE}`, details: [{ path: '/event/id', message: EVENT_ID_RULE }] })
      ws.send({ op: 'publish', ref: 'empty', event: { id: '', type: 'match.join', data: { match: 'm1' } } })
      expect((await ws.reply('empty')).error.details).toEqual([{ path: '/event/id', message: EVENT_ID_RULE }])

      ws.send({ op: 'publish', ref: 'match', event: { type: 'match.join', data: { match: 'bad.name' } } })
      expect((await ws.reply('match')).error).toEqual({
        code: 'invalid_event',
        message: `event data does not match its type (event 0: /data/match ${NAME_RULE})`,
        details: [{ index: 0, path: '/data/match', message: NAME_RULE }],
      })

      ws.send({ op: 'subscribe', ref: 'sub', channel: 'chat:a b' })
      const sub = (await ws.reply('sub')).error
      expect(sub).toMatchObject({ code: 'invalid_frame', details: [{ path: '/channel' }] })
      expect(sub.message).toStartWith('channel must be leaderboard:<board>')
      for (const m of [sub.message, ...sub.details.map((d: { message: string }) => d.message)]) expect([m, quotesPattern(m)]).toEqual([m, false])
    } finally {
      ws.close()
    }
    expect(await node.streamCount()).toBe(0)
  })
})
