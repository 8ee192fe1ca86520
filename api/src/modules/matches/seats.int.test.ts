import { afterEach, describe, expect, test } from 'bun:test'
import { createLogger } from '../../../../core/logger'
import { until, WsClient } from '../../../../test/e2e/harness'
import { startTestWorker } from '../../../../stream-workers/src/testing/harness'
import { mintUserToken } from '../../auth/mint'
import { startApi, type RunningApi } from '../../server'
import { startTestNode, type TestNode } from '../../test-support'

let node: TestNode | undefined
const closers: (() => Promise<unknown>)[] = []
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close().catch(() => {})
  await node?.close()
  node = undefined
})

describe('seat watcher on a real node', () => {
  test('only seated players make connection events: spectators of started matches (known from the read at start or from the feed) and of ended ones make none', async () => {
    const n = (node = await startTestNode({ FANFARE_PRESENCE_GRACE_MS: '100', FANFARE_MATCH_GRACE_MS: '60000' }))
    const worker = await startTestWorker(n.env)
    closers.push(() => worker.stop())
    const token = (sub: string) => mintUserToken(n.env.vars.FANFARE_JWT_SECRET, { sub })
    let base = n.base
    const post = async (events: unknown[], as: string = n.env.vars.FANFARE_INGEST_TOKEN) => {
      const r = await fetch(`${base}/v1/events`, { method: 'POST', headers: { authorization: `Bearer ${as}`, 'content-type': 'application/json' }, body: JSON.stringify({ events }) })
      expect(r.status).toBe(202)
    }
    const match = async (id: string) => (await fetch(`${base}/v1/matches/${id}`, { headers: { authorization: `Bearer ${await token('reader')}` } })).json() as Promise<any>
    // Before this node starts: a started match (the node reads it at start).
    await post([{ type: 'match.created', data: { match: 'early', mode: 'duel', maxPlayers: 3 } }, { type: 'match.created', data: { match: 'gone', mode: 'duel', maxPlayers: 2 } }])
    await post([{ type: 'match.join', data: { match: 'early' } }], await token('ann'))
    await post([{ type: 'match.start', data: { match: 'early' } }])
    await until('early started', async () => (await match('early')).status === 'started', 20_000)
    await n.api.stop()
    const api: RunningApi = await startApi({ config: n.env.config, db: n.database.db, nc: n.nc, logger: createLogger('silent') })
    closers.push(() => api.stop())
    base = `http://127.0.0.1:${api.port}`
    // After: a started match the node learns of from the change feed only, and a match aborted.
    await post([{ type: 'match.created', data: { match: 'late', mode: 'duel', maxPlayers: 3 } }])
    await post([{ type: 'match.join', data: { match: 'late' } }], await token('bob'))
    await post([{ type: 'match.start', data: { match: 'late' } }, { type: 'match.abort', data: { match: 'gone' } }])
    await until('late started', async () => (await match('late')).status === 'started', 20_000)
    // The seat watcher acts after its 3 s warm-up; and the feed's notices reach the node shortly after the commit.
    await Bun.sleep(3_500)

    const visit = async (sub: string, channels: string[]) => {
      const c = await WsClient.open(`ws://127.0.0.1:${api.port}/v1/ws?token=${await token(sub)}`)
      for (const channel of channels) c.send({ op: 'subscribe', ref: channel, channel })
      await until(`${sub} subscribed`, () => channels.every((ch) => c.frames.some((f) => f.channel === ch && f.op === 'snapshot')))
      await Bun.sleep(300)
      c.close()
    }
    await visit('spec', ['match:early', 'match:late', 'match:gone'])
    await visit('ann', ['match:early'])
    await visit('bob', ['match:late'])
    await until('ann and bob shown disconnected', async () => (await match('early')).players[0].connected === false && (await match('late')).players[0].connected === false, 20_000)
    await Bun.sleep(500)
    const connections = (await n.streamEvents()).filter((e) => e.type === 'match.player.connection').map((e) => (e as unknown as { data: { match: string; player: string; connected: boolean } }).data)
    expect(connections.map((d) => `${d.match}:${d.player}:${d.connected}`).sort()).toEqual(['early:ann:false', 'early:ann:true', 'late:bob:false', 'late:bob:true'])
  }, 60_000)
})
