import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import type { TestEnv } from '../../../core/testing/env'
import { WsClient } from '../../../test/e2e/harness'
import type { RunningApi } from '../server'
import { startTestNode, UPGRADE_HEADERS, type TestNode } from '../test-support'

/** The token check of the WebSocket upgrade, on a real server. */
describe('WebSocket token', () => {
  let node: TestNode
  let env: TestEnv
  let api: RunningApi

  beforeAll(async () => {
    node = await startTestNode()
    ;({ env, api } = node)
  })
  afterAll(() => node?.close())

  const upgrade = (token: string) =>
    fetch(`http://127.0.0.1:${api.port}/v1/ws?token=${encodeURIComponent(token)}`, { headers: UPGRADE_HEADERS })

  test('a token as long as a real one but with non-ASCII characters is 401, not 500', async () => {
    for (const real of [env.vars.FANFARE_ADMIN_TOKEN, env.vars.FANFARE_INGEST_TOKEN]) {
      // Same length in UTF-16 code units, longer in UTF-8 bytes.
      for (const token of [real.slice(0, -1) + 'é', 'é'.repeat(real.length), real.slice(0, -2) + '😀']) {
        const res = await upgrade(token)
        expect([token, res.status]).toEqual([token, 401])
        expect(((await res.json()) as any).error.code).toBe('invalid_token')
      }
    }
  })

  test('a wrong token of the right length is 401; the real ones open', async () => {
    const admin = env.vars.FANFARE_ADMIN_TOKEN
    const res = await upgrade(admin.slice(0, -1) + (admin.endsWith('x') ? 'y' : 'x'))
    expect(res.status).toBe(401)
    for (const token of [admin, env.vars.FANFARE_INGEST_TOKEN]) {
      const c = await WsClient.open(`ws://127.0.0.1:${api.port}/v1/ws?token=${token}`)
      c.close()
    }
  })

  test('the token may come as Authorization: Bearer (a server-side client); a bad one is 401, never an anonymous socket', async () => {
    const wsUrl = `ws://127.0.0.1:${api.port}/v1/ws`
    const handshake = UPGRADE_HEADERS
    const key = env.vars.FANFARE_INGEST_TOKEN
    const wrong = await fetch(`http://127.0.0.1:${api.port}/v1/ws`, { headers: { ...handshake, authorization: `Bearer ${key.slice(0, -1)}${key.endsWith('x') ? 'y' : 'x'}` } })
    expect(wrong.status).toBe(401)
    const malformed = await fetch(`http://127.0.0.1:${api.port}/v1/ws`, { headers: { ...handshake, authorization: 'Basic Zm9vOmJhcg==' } })
    expect(malformed.status).toBe(401)
    const both = await fetch(`http://127.0.0.1:${api.port}/v1/ws?token=${key}`, { headers: { ...handshake, authorization: `Bearer ${key}` } })
    expect(both.status).toBe(422)
    expect(((await both.json()) as any).error.code).toBe('invalid_request')
    // Opened with the key in the header, the socket is the key's: it may publish (an anonymous one may not).
    const c = await WsClient.open(wsUrl, { authorization: `Bearer ${key}` })
    c.send({ op: 'publish', ref: 'p', event: { id: 'ws-header-1', type: 'score.submitted', data: { board: 'hdr', player: 'p1', score: 1 } } })
    expect(await c.reply('p')).toMatchObject({ op: 'ack', ref: 'p' })
    c.close()
  })

  test('/docs/json lists what the upgrade answers instead of 101 (README "WebSocket protocol" and "Limits"), and they are real', async () => {
    const doc = (await (await fetch(`http://127.0.0.1:${api.port}/docs/json`)).json()) as any
    expect(Object.keys(doc.paths['/v1/ws'].get.responses ?? {}).sort()).toEqual(['400', '401', '403', '422', '426', '429', '503'])
    const plain = await fetch(`http://127.0.0.1:${api.port}/v1/ws`)
    expect([plain.status, ((await plain.json()) as any).error.code]).toEqual([426, 'upgrade_required'])
  })
})
