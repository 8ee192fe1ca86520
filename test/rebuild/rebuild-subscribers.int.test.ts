import { afterAll, describe, expect, test } from 'bun:test'
import { until } from '../../core/testing/wait'
import { startTestNode, type TestNode } from '../../api/src/test-support'
import { startTestWorker } from '../../stream-workers/src/testing/harness'
import { leaderboardsProjection } from '../../stream-workers/src/projections/leaderboards/apply'
import type { Projection } from '../../stream-workers/src/projections/types'
import type { Workers } from '../../stream-workers/src/workers'

/**
 * What a subscriber holds across a rebuild that changes the model (a dead letter the fixed code
 * now applies), on a channel with no later change: the rebuilt state, told by a resync snapshot,
 * never the replaced state with nothing said.
 */
describe('subscribers across a rebuild', () => {
  let node: TestNode
  let worker: Workers
  afterAll(async () => {
    await worker?.stop().catch(() => {})
    await node?.close()
  })

  test('a channel the rebuild changed, or emptied, and nothing changes after is re-synced to the rebuilt state', async () => {
    node = await startTestNode({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '1500' })
    // The "bug": player cy's scores are refused (dead letters) until the test fixes it; the fix
    // refuses board z's scores (invalid, let through by the bug).
    let broken = true
    const buggy: Projection = {
      ...leaderboardsProjection,
      apply: async (db, events) => {
        const bad = events.filter((e) => e.event.type === 'score.submitted' && (broken ? e.event.data.player === 'cy' : e.event.data.board === 'z'))
        const applied = await leaderboardsProjection.apply(db, events.filter((e) => !bad.includes(e)))
        return { ...applied, refused: [...(applied.refused ?? []), ...bad.map((e) => ({ seq: e.seq, reason: 'bug' }))] }
      },
    }
    worker = await startTestWorker(node.env, { projections: [buggy] })
    const admin = { authorization: `Bearer ${node.env.vars.FANFARE_ADMIN_TOKEN}` }
    const get = async (path: string, headers = {}) => (await fetch(`${node.base}${path}`, { headers })).json() as Promise<any>
    for (const [board, player, score] of [['b', 'ann', 5], ['b', 'cy', 4], ['z', 'zed', 9]] as const) {
      const r = await fetch(`${node.base}/v1/events`, {
        method: 'POST',
        headers: { authorization: `Bearer ${node.env.vars.FANFARE_INGEST_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ type: 'score.submitted', data: { board, player, score } }),
      })
      expect(r.status).toBe(202)
    }
    await until('cy dead-lettered', async () => (await get('/admin/dead-letters', admin)).deadLetters.length === 1)
    await until('ann on the board', async () => (await get('/v1/leaderboards/b')).entries.length === 1)
    await until('zed on board z', async () => (await get('/v1/leaderboards/z')).entries.length === 1)

    const frames: any[] = []
    const ws = new WebSocket(node.wsUrl)
    ws.onmessage = (m) => frames.push(JSON.parse(String(m.data)))
    await new Promise((resolve) => (ws.onopen = resolve))
    ws.send(JSON.stringify({ op: 'subscribe', ref: 's', channel: 'leaderboard:b' }))
    ws.send(JSON.stringify({ op: 'subscribe', ref: 'z', channel: 'leaderboard:z' }))
    const snapshot = (board: string, resync = false) => frames.find((f) => f.op === 'snapshot' && f.channel === `leaderboard:${board}` && !!f.resync === resync)
    const first = await until('snapshot of b', () => snapshot('b'))
    expect(first.data.entries.map((e: { player: string }) => e.player)).toEqual(['ann'])
    expect((await until('snapshot of z', () => snapshot('z'))).data.entries.map((e: { player: string }) => e.player)).toEqual(['zed'])

    broken = false
    expect((await fetch(`${node.base}/admin/projections/leaderboards/rebuild`, { method: 'POST', headers: admin })).status).toBe(202)
    await until('rebuild done', async () => (await get('/admin/projections/leaderboards/rebuild', admin)).state === 'done', 30_000, 100)
    expect((await get('/v1/leaderboards/b')).entries.map((e: { player: string }) => e.player)).toEqual(['ann', 'cy'])
    expect((await get('/v1/leaderboards/z')).entries).toEqual([])

    // No event follows: the rebuild itself must tell the subscriber (the outbox sweeper publishes within ~4 s).
    const resync = await until('a resync snapshot of b', () => snapshot('b', true), 15_000)
    expect(resync.epoch).not.toBe(first.epoch)
    expect(resync.data.entries.map((e: { player: string; score: number }) => [e.player, e.score])).toEqual([['ann', 5], ['cy', 4]])
    const emptied = await until('a resync snapshot of z', () => snapshot('z', true), 15_000)
    expect([emptied.version, emptied.epoch, emptied.data.entries]).toEqual([0, '', []])
    expect(frames.filter((f) => f.op === 'update')).toEqual([])
    // And updates go on from the re-synced version.
    const r = await fetch(`${node.base}/v1/events`, {
      method: 'POST',
      headers: { authorization: `Bearer ${node.env.vars.FANFARE_INGEST_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'score.submitted', data: { board: 'b', player: 'dan', score: 1 } }),
    })
    expect(r.status).toBe(202)
    const update = await until('an update of b', () => frames.find((f) => f.op === 'update'))
    expect([update.channel, update.version, update.epoch, update.data.player]).toEqual(['leaderboard:b', resync.version + 1, resync.epoch, 'dan'])
    expect(frames.filter((f) => f.op === 'snapshot').length).toBe(4)
    ws.close()
  }, 60_000)
})
