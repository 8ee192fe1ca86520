import { afterAll, describe, expect, test } from 'bun:test'
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import { asc } from 'drizzle-orm'
import { until } from '../../core/testing/wait'
import { startTestNode, type TestNode } from '../../api/src/test-support'
import { derivedScores, leaderboardEntries } from '../../core/db/schema'
import { contracts, dedupIdOf, keyOf, partitionOf, subjects, type StoredEvent } from '../../core/events'
import { MATCH_RESULTS_BY, resultEventId } from '../../core/matches'
import { topology } from '../../core/nats'
import { periodBounds, periodKey } from '../../core/periods'
import { startTestWorker } from '../../stream-workers/src/testing/harness'
import { leaderboardsProjection } from '../../stream-workers/src/projections/leaderboards/apply'
import type { Projection } from '../../stream-workers/src/projections/types'
import type { Workers } from '../../stream-workers/src/workers'

const DAY = 86_400_000

/**
 * A daily board with a closed period goes through a rebuild unchanged. JetStream stamps the stored
 * time itself, so a test cannot store events on an earlier day; instead the worker runs the
 * leaderboards projection behind a lens that moves every stored time before `split` one day back,
 * a pure function of the stored time it is handed: live and in the rebuild alike, so a rebuild
 * that applies each event at its stored time must reproduce the closed day exactly, and one that
 * used anything else (its own clock) would put those scores in today's period.
 */
describe('a closed period through a rebuild', () => {
  let node: TestNode
  let worker: Workers
  afterAll(async () => {
    await worker?.stop().catch(() => {})
    await node?.close()
  })

  test("every period's standings, the closed one included, come out of the rebuild as they went in; the subscriber re-syncs to them", async () => {
    node = await startTestNode({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '1500' })
    let split = Number.POSITIVE_INFINITY
    const dayEarlier: Projection = {
      ...leaderboardsProjection,
      apply: (db, events) => leaderboardsProjection.apply(db, events.map((e) => (e.storedAt.getTime() < split ? { ...e, storedAt: new Date(e.storedAt.getTime() - DAY) } : e))),
    }
    worker = await startTestWorker(node.env, { projections: [dayEarlier] })
    const jsm = await jetstreamManager(node.nc)
    const stream = topology(node.env.config).eventStream
    const admin = { authorization: `Bearer ${node.env.vars.FANFARE_ADMIN_TOKEN}` }
    const get = async (path: string, headers = {}) => (await fetch(`${node.base}${path}`, { headers })).json() as Promise<any>
    const board = 'days'
    const configured = await fetch(`${node.base}/admin/leaderboards/${board}`, {
      method: 'PUT',
      headers: { ...admin, 'content-type': 'application/json' },
      body: JSON.stringify({ operator: 'sum', reset: 'daily' }),
    })
    expect(configured.status).toBe(200)

    /** Scores sent through the API, with their stream sequences. */
    const send = async (scores: [player: string, score: number][]) => {
      const r = await fetch(`${node.base}/v1/events`, {
        method: 'POST',
        headers: { authorization: `Bearer ${node.env.vars.FANFARE_INGEST_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ events: scores.map(([player, score]) => ({ type: 'score.submitted', data: { board, player, score } })) }),
      })
      expect(r.status).toBe(202)
      const { results } = (await r.json()) as { results: { seq: number }[] }
      return scores.map(([player, score], i) => ({ player, score, seq: results[i].seq }))
    }

    // The closed day: ann and bo. Then today: ann again, and cy.
    const early = await send([['ann', 5], ['bo', 4], ['ann', 3]])
    split = (await storedAt(jsm, stream, early[early.length - 1].seq)) + 1
    await Bun.sleep(5)
    const late = await send([['ann', 2], ['cy', 1], ['ann', 7]])
    // A match's result stored today for a match that finished on the closed day counts there (its
    // `at`, the finish's stored time, as the matches projection publishes it): ann's third score of that day.
    const finish = new Date(split - 1 - DAY).toISOString()
    const result = { id: resultEventId('m1', 0), by: MATCH_RESULTS_BY, type: 'score.submitted', v: contracts['score.submitted'].version, data: { board, player: 'ann', score: 10 }, at: finish } as StoredEvent
    const ack = await jetstream(node.nc).publish(subjects.event(node.env.config.FANFARE_SUBJECT_PREFIX, partitionOf(keyOf(result), node.env.config.FANFARE_PARTITIONS), result.type), JSON.stringify(result), {
      msgID: dedupIdOf(result),
    })

    // The oracle: each score in the day of its (moved) stored time, the result in its finish's day; sums.
    const expected = new Map<string, { board: string; period: string; player: string; score: number; reachedSeq: number }>()
    const count = (period: string, player: string, score: number, seq: number) => {
      const cur = expected.get(`${period}/${player}`)
      expected.set(`${period}/${player}`, { board, period, player, score: (cur?.score ?? 0) + score, reachedSeq: seq })
    }
    for (const s of [...early, ...late]) {
      const at = await storedAt(jsm, stream, s.seq)
      count(periodKey('daily', at < split ? at - DAY : at), s.player, s.score, s.seq)
    }
    count(periodKey('daily', Date.parse(finish)), 'ann', 10, ack.seq)
    const expectedRows = [...expected.values()].sort((a, b) => (`${a.period}/${a.player}` < `${b.period}/${b.player}` ? -1 : 1))
    const periods = [...new Set(expectedRows.map((r) => r.period))]
    // What the test is about: two periods, the first closed now, ann in both.
    expect(periods.length).toBe(2)
    expect(periodBounds('daily', Date.parse(`${periods[0]}T00:00:00Z`)).end).toBeLessThanOrEqual(Date.now())
    expect(expectedRows.filter((r) => r.player === 'ann').map((r) => r.period)).toEqual(periods)

    const rows = async () => ({
      entries: (await node.database.db.select().from(leaderboardEntries).orderBy(asc(leaderboardEntries.period), asc(leaderboardEntries.player))).map(({ updatedAt: _, ...r }) => r),
      derived: await node.database.db.select().from(derivedScores).orderBy(asc(derivedScores.id)),
    })
    const pages = async () => Object.fromEntries(await Promise.all(periods.map(async (p) => [p, await get(`/v1/leaderboards/${board}?period=${p}`)] as const)))
    // Applied once the sums hold every score, whichever periods they went to.
    const total = expectedRows.reduce((sum, r) => sum + r.score, 0)
    await until('every score applied', async () => (await rows()).entries.reduce((sum, r) => sum + r.score, 0) === total, 20_000, 100)
    const before = { rows: await rows(), pages: await pages() }
    expect(before.rows.entries).toEqual(expectedRows)
    expect(before.rows.derived.map((d) => [d.id, Number(d.seq)])).toEqual([[dedupIdOf(result), ack.seq]])
    // The pages rank the oracle's sums: closed day ann 18 (5 + 3 + the result's 10), bo 4; today ann 9, cy 1.
    for (const p of periods) {
      const ranked = expectedRows.filter((r) => r.period === p).sort((a, b) => b.score - a.score || a.reachedSeq - b.reachedSeq)
      expect(before.pages[p]).toMatchObject({ board, reset: 'daily', period: p, entries: ranked.map((r, i) => ({ rank: i + 1, player: r.player, score: r.score })) })
    }
    expect(before.pages[periods[0]].entries.map((e: any) => [e.player, e.score])).toEqual([['ann', 18], ['bo', 4]])
    expect(before.pages[periods[1]].entries.map((e: any) => [e.player, e.score])).toEqual([['ann', 9], ['cy', 1]])

    // A subscriber of the board holds today's standings.
    const frames: any[] = []
    const ws = new WebSocket(node.wsUrl)
    ws.onmessage = (m) => frames.push(JSON.parse(String(m.data)))
    await new Promise((resolve) => (ws.onopen = resolve))
    ws.send(JSON.stringify({ op: 'subscribe', ref: 's', channel: `leaderboard:${board}` }))
    const snapshot = (resync: boolean) => frames.find((f) => f.op === 'snapshot' && f.channel === `leaderboard:${board}` && !!f.resync === resync)
    const first = await until('the first snapshot', () => snapshot(false))
    expect(first.data).toMatchObject({ period: periods[1], entries: before.pages[periods[1]].entries })

    expect((await fetch(`${node.base}/admin/projections/leaderboards/rebuild`, { method: 'POST', headers: admin })).status).toBe(202)
    await until('rebuild done', async () => (await get('/admin/projections/leaderboards/rebuild', admin)).state === 'done', 30_000, 100)

    expect(await rows()).toEqual(before.rows)
    expect(await pages()).toEqual(before.pages)
    // No event follows: the rebuild's switch tells the subscriber (the outbox sweeper publishes within ~4 s).
    const resync = await until('a resync snapshot', () => snapshot(true), 15_000)
    expect(resync.epoch).not.toBe(first.epoch)
    expect(resync.data).toMatchObject({ period: periods[1], entries: before.pages[periods[1]].entries })
    expect(frames.filter((f) => f.op === 'update')).toEqual([])
    ws.close()
  }, 60_000)
})

/**
 * JetStream's stored time of message `seq`, floored to the millisecond as the worker reads it (see
 * batchMessageOf); from the nanosecond string, which a Date would not parse exactly.
 */
async function storedAt(jsm: JetStreamManager, stream: string, seq: number): Promise<number> {
  const timestamp = (await jsm.streams.getMessage(stream, { seq }))?.timestamp ?? ''
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?Z$/.exec(timestamp)
  if (!m) throw new Error(`no stored time for ${seq}: ${JSON.stringify(timestamp)}`)
  return Date.parse(`${m[1]}.${(m[2] ?? '').padEnd(3, '0').slice(0, 3)}Z`)
}
