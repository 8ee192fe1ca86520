import { afterAll, describe, expect, test } from 'bun:test'
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import { asc } from 'drizzle-orm'
import { until } from '../../core/testing/wait'
import { startTestNode, type TestNode } from '../../api/src/test-support'
import { derivedScores, leaderboardEntries } from '../../core/db/schema'
import { contracts, dedupIdOf, keyOf, partitionOf, subjects, type StoredEvent } from '../../core/events'
import { MATCH_RESULTS_BY, resultEventId } from '../../core/matches'
import { topology } from '../../core/nats'
import { periodBounds, periodKey, previousKey, type Reset } from '../../core/periods'
import { startTestWorker } from '../../stream-workers/src/testing/harness'
import { leaderboardsProjection } from '../../stream-workers/src/projections/leaderboards/apply'
import type { Projection } from '../../stream-workers/src/projections/types'
import type { Workers } from '../../stream-workers/src/workers'

/** The three resets with periods, one board each; the same scores go to every board. */
const boards = [
  { board: 'days', reset: 'daily' },
  { board: 'weeks', reset: 'weekly' },
  { board: 'months', reset: 'monthly' },
] as const satisfies readonly { board: string; reset: Reset }[]

/**
 * An instant one period before `t`: as far into the previous period as `t` is into its own, or that
 * period's last millisecond when it is shorter (a month). One day back for daily, seven for weekly.
 */
function periodEarlier(reset: Reset, t: number): number {
  const { start } = periodBounds(reset, t)
  const previous = periodBounds(reset, start - 1)
  return Math.min(previous.start + (t - start), previous.end - 1)
}

/**
 * A board with a closed period goes through a rebuild unchanged, under each reset (daily, weekly,
 * monthly). JetStream stamps the stored time itself, so a test cannot store events in an earlier
 * period; instead the worker runs the leaderboards projection behind a lens that moves every stored
 * time before `split` one period of its board back (periodEarlier), a pure function of the stored
 * time it is handed: live and in the rebuild alike, so a rebuild that applies each event at its
 * stored time must reproduce the closed periods exactly, and one that used anything else (its own
 * clock) would put those scores in the current period. A one-day move alone would reach the
 * previous week only on Mondays and the previous month only on the 1st.
 */
describe('a closed period through a rebuild', () => {
  let node: TestNode
  let worker: Workers
  afterAll(async () => {
    await worker?.stop().catch(() => {})
    await node?.close()
  })

  test("every period's standings of daily, weekly and monthly boards, the closed ones included, come out of the rebuild as they went in; the subscriber re-syncs to them", async () => {
    node = await startTestNode({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '1500' })
    let split = Number.POSITIVE_INFINITY
    const resetOf = new Map<string, Reset>(boards.map((b) => [b.board, b.reset]))
    const periodEarlierLens: Projection = {
      ...leaderboardsProjection,
      apply: (db, events) =>
        leaderboardsProjection.apply(
          db,
          events.map((e) => {
            const reset = e.event.type === 'score.submitted' ? resetOf.get(e.event.data.board) : undefined
            return reset !== undefined && e.storedAt.getTime() < split ? { ...e, storedAt: new Date(periodEarlier(reset, e.storedAt.getTime())) } : e
          }),
        ),
    }
    worker = await startTestWorker(node.env, { projections: [periodEarlierLens] })
    const jsm = await jetstreamManager(node.nc)
    const stream = topology(node.env.config).eventStream
    const admin = { authorization: `Bearer ${node.env.vars.FANFARE_ADMIN_TOKEN}` }
    const get = async (path: string, headers = {}) => (await fetch(`${node.base}${path}`, { headers })).json() as Promise<any>
    for (const { board, reset } of boards) {
      const configured = await fetch(`${node.base}/admin/leaderboards/${board}`, {
        method: 'PUT',
        headers: { ...admin, 'content-type': 'application/json' },
        body: JSON.stringify({ operator: 'sum', reset }),
      })
      expect(configured.status).toBe(200)
    }

    /** The same scores to every board, sent through the API, with their stream sequences. */
    const send = async (scores: [player: string, score: number][]) => {
      const sent = boards.flatMap(({ board }) => scores.map(([player, score]) => ({ board, player, score })))
      const r = await fetch(`${node.base}/v1/events`, {
        method: 'POST',
        headers: { authorization: `Bearer ${node.env.vars.FANFARE_INGEST_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ events: sent.map((data) => ({ type: 'score.submitted', data })) }),
      })
      expect(r.status).toBe(202)
      const { results } = (await r.json()) as { results: { seq: number }[] }
      return sent.map((s, i) => ({ ...s, seq: results[i].seq }))
    }

    // The closed period: ann and bo. Then the current one: ann again, and cy.
    const early = await send([['ann', 5], ['bo', 4], ['ann', 3]])
    split = (await storedAt(jsm, stream, early[early.length - 1].seq)) + 1
    await Bun.sleep(5)
    const late = await send([['ann', 2], ['cy', 1], ['ann', 7]])
    // A match's result stored now for a match that finished in the closed period counts there (its
    // `at`, the finish's stored time, as the matches projection publishes it): ann's third score of
    // that period. One result per board.
    const results = await Promise.all(
      boards.map(async ({ board, reset }, i) => {
        const finish = new Date(periodEarlier(reset, split - 1)).toISOString()
        const result = { id: resultEventId('m1', i), by: MATCH_RESULTS_BY, type: 'score.submitted', v: contracts['score.submitted'].version, data: { board, player: 'ann', score: 10 }, at: finish } as StoredEvent
        const ack = await jetstream(node.nc).publish(subjects.event(node.env.config.FANFARE_SUBJECT_PREFIX, partitionOf(keyOf(result), node.env.config.FANFARE_PARTITIONS), result.type), JSON.stringify(result), {
          msgID: dedupIdOf(result),
        })
        return { board, reset, finish, result, seq: ack.seq }
      }),
    )

    // The oracle: each score in the period of its (moved) stored time, each result in its finish's period; sums.
    const expected = new Map<string, { board: string; period: string; player: string; score: number; reachedSeq: number }>()
    const count = (board: string, period: string, player: string, score: number, seq: number) => {
      const cur = expected.get(`${board}/${period}/${player}`)
      expected.set(`${board}/${period}/${player}`, { board, period, player, score: (cur?.score ?? 0) + score, reachedSeq: seq })
    }
    for (const s of [...early, ...late]) {
      const reset = resetOf.get(s.board)!
      const at = await storedAt(jsm, stream, s.seq)
      count(s.board, periodKey(reset, at < split ? periodEarlier(reset, at) : at), s.player, s.score, s.seq)
    }
    for (const r of results) count(r.board, periodKey(r.reset, Date.parse(r.finish)), 'ann', 10, r.seq)
    const byKey = (a: { board: string; period: string; player: string }, b: typeof a) => (`${a.board}/${a.period}/${a.player}` < `${b.board}/${b.period}/${b.player}` ? -1 : 1)
    const expectedRows = [...expected.values()].sort(byKey)
    const periodsOf = new Map<string, string[]>(boards.map(({ board }) => [board, [...new Set(expectedRows.filter((r) => r.board === board).map((r) => r.period))]]))
    // What the test is about: per board two periods, the previous one (closed now) and the current
    // one, ann in both.
    for (const { board, reset } of boards) {
      const now = Date.now()
      expect({ board, periods: periodsOf.get(board) }).toEqual({ board, periods: [previousKey(reset, now), periodKey(reset, now)] })
      expect(expectedRows.filter((r) => r.board === board && r.player === 'ann').map((r) => r.period)).toEqual(periodsOf.get(board)!)
    }

    const rows = async () => ({
      entries: (await node.database.db.select().from(leaderboardEntries).orderBy(asc(leaderboardEntries.board), asc(leaderboardEntries.period), asc(leaderboardEntries.player))).map(
        ({ updatedAt: _, ...r }) => r,
      ),
      derived: await node.database.db.select().from(derivedScores).orderBy(asc(derivedScores.id)),
    })
    const pages = async () =>
      Object.fromEntries(
        await Promise.all(boards.flatMap(({ board }) => periodsOf.get(board)!.map(async (p) => [`${board}/${p}`, await get(`/v1/leaderboards/${board}?period=${p}`)] as const))),
      )
    // Applied once the sums hold every score, whichever periods they went to.
    const total = expectedRows.reduce((sum, r) => sum + r.score, 0)
    await until('every score applied', async () => (await rows()).entries.reduce((sum, r) => sum + r.score, 0) === total, 20_000, 100)
    const before = { rows: await rows(), pages: await pages() }
    expect(before.rows.entries).toEqual(expectedRows)
    expect(before.rows.derived.map((d) => [d.id, Number(d.seq)])).toEqual(results.map((r) => [dedupIdOf(r.result), r.seq]).sort((a, b) => (a[0] < b[0] ? -1 : 1)))
    // The pages rank the oracle's sums: closed period ann 18 (5 + 3 + the result's 10), bo 4; current ann 9, cy 1.
    for (const { board, reset } of boards) {
      const [closed, current] = periodsOf.get(board)!
      for (const p of [closed, current]) {
        const ranked = expectedRows.filter((r) => r.board === board && r.period === p).sort((a, b) => b.score - a.score || a.reachedSeq - b.reachedSeq)
        expect(before.pages[`${board}/${p}`]).toMatchObject({ board, reset, period: p, entries: ranked.map((r, i) => ({ rank: i + 1, player: r.player, score: r.score })) })
      }
      expect(before.pages[`${board}/${closed}`].entries.map((e: any) => [e.player, e.score])).toEqual([['ann', 18], ['bo', 4]])
      expect(before.pages[`${board}/${current}`].entries.map((e: any) => [e.player, e.score])).toEqual([['ann', 9], ['cy', 1]])
    }

    // A subscriber of every board holds its current standings.
    const frames: any[] = []
    const ws = new WebSocket(node.wsUrl)
    ws.onmessage = (m) => frames.push(JSON.parse(String(m.data)))
    await new Promise((resolve) => (ws.onopen = resolve))
    for (const { board } of boards) ws.send(JSON.stringify({ op: 'subscribe', ref: board, channel: `leaderboard:${board}` }))
    const snapshot = (board: string, resync: boolean) => frames.find((f) => f.op === 'snapshot' && f.channel === `leaderboard:${board}` && !!f.resync === resync)
    const current = (board: string) => periodsOf.get(board)![1]
    const firsts = new Map<string, any>()
    for (const { board } of boards) {
      const first = await until(`the first snapshot of ${board}`, () => snapshot(board, false))
      expect(first.data).toMatchObject({ period: current(board), entries: before.pages[`${board}/${current(board)}`].entries })
      firsts.set(board, first)
    }

    expect((await fetch(`${node.base}/admin/projections/leaderboards/rebuild`, { method: 'POST', headers: admin })).status).toBe(202)
    await until('rebuild done', async () => (await get('/admin/projections/leaderboards/rebuild', admin)).state === 'done', 30_000, 100)

    expect(await rows()).toEqual(before.rows)
    expect(await pages()).toEqual(before.pages)
    // No event follows: the rebuild's switch tells the subscriber (the outbox sweeper publishes within ~4 s).
    for (const { board } of boards) {
      const resync = await until(`a resync snapshot of ${board}`, () => snapshot(board, true), 15_000)
      expect(resync.epoch).not.toBe(firsts.get(board).epoch)
      expect(resync.data).toMatchObject({ period: current(board), entries: before.pages[`${board}/${current(board)}`].entries })
    }
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
