import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { jetstream } from '@nats-io/jetstream'
import { and, eq } from 'drizzle-orm'
import { putBoardConfig } from '../../api/src/modules/admin/service'
import { Conflict } from '../../api/src/errors'
import { createHarness, type ApiHarness } from '../../api/src/test-support'
import { connectBunSql, type Database, type Db } from '../../core/db/client'
import { leaderboardEntries, leaderboards, projectionCheckpoints } from '../../core/db/schema'
import { keyOf, partitionOf, subjects, type StoredEvent } from '../../core/events'
import { createLogger } from '../../core/logger'
import { until } from '../../core/testing/wait'
import { leaderboardsProjection } from '../../stream-workers/src/projections/leaderboards/apply'
import { applyBatch, claimFence, type BatchMessage, type BatchOwner } from '../../stream-workers/src/runtime/batch'
import { StaleReadError } from '../../stream-workers/src/runtime/errors'
import { runRebuild } from '../../stream-workers/src/rebuild/rebuild'
import { startTestWorker } from '../../stream-workers/src/testing/harness'

// A board's rules may change until it has scores. The admin API and the workers decide that on
// the same row (leaderboards.has_scores), so a rules change and a board's first scores cannot pass
// each other: whichever commits first, the other sees it.
describe('board rules and first scores', () => {
  let h: ApiHarness
  let worker: Database
  beforeAll(async () => {
    h = await createHarness()
    worker = await connectBunSql(h.env.vars.DATABASE_URL, { max: 2 })
  })
  afterAll(async () => {
    await worker.close()
    await h.close()
  })

  let n = 0
  const score = (board: string, player: string, value: number): StoredEvent => ({
    id: `s-${board}-${n++}`,
    by: 'ingest',
    type: 'score.submitted',
    v: 1,
    data: { board, player, score: value },
    at: new Date().toISOString(),
  })
  /** The events as a live runner of their partition would get them, and that runner's ownership. */
  const batchOf = async (events: StoredEvent[]): Promise<{ owner: BatchOwner; messages: BatchMessage[] }> => {
    const partitions = h.env.config.FANFARE_PARTITIONS
    const partition = partitionOf(keyOf(events[0]), partitions)
    const token = await claimFence(worker.db, 'leaderboards', partition)
    const [cp] = await worker.db.select().from(projectionCheckpoints).where(and(eq(projectionCheckpoints.projection, 'leaderboards'), eq(projectionCheckpoints.partition, partition)))
    const seq = Number(cp.seq)
    const messages = events.map((event, i) => ({
      subject: subjects.event(h.env.config.FANFARE_SUBJECT_PREFIX, partition, event.type),
      seq: seq + i + 1,
      body: new TextEncoder().encode(JSON.stringify(event)),
      storedAt: new Date(),
    }))
    return { owner: { projection: leaderboardsProjection, partition, token, partitions, stream: cp.stream }, messages }
  }
  const scores = async (board: string) =>
    Object.fromEntries((await h.database.db.select().from(leaderboardEntries).where(eq(leaderboardEntries.board, board))).map((r) => [r.player, r.score]))
  const settled = (p: Promise<unknown>) => Promise.race([p.then(() => true, () => true), Bun.sleep(300).then(() => false)])

  test('over HTTP: a board scored by the workers keeps its rules (409 board_has_scores); re-stating them is fine', async () => {
    const workers = await startTestWorker(h.env)
    try {
      const t = h.adminToken
      expect((await h.call('PUT', '/admin/leaderboards/ranked', { token: t, body: { order: 'desc', operator: 'best' } })).status).toBe(200)
      const sent = await h.call('POST', '/v1/events', {
        token: h.ingestToken,
        body: { events: [{ type: 'score.submitted', data: { board: 'ranked', player: 'p', score: 1 } }, { type: 'score.submitted', data: { board: 'unconfigured', player: 'q', score: 2 } }] },
      })
      expect(sent.status).toBe(202)
      await until('both boards scored', async () => ((await scores('ranked')).p === 1 && (await scores('unconfigured')).q === 2) || undefined)

      const change = await h.call('PUT', '/admin/leaderboards/ranked', { token: t, body: { operator: 'sum' } })
      expect([change.status, change.json.error.code, change.json.error.details]).toEqual([409, 'board_has_scores', { current: { order: 'desc', operator: 'best', reset: 'none' } }])
      expect((await h.call('PUT', '/admin/leaderboards/ranked', { token: t, body: { order: 'desc' } })).status).toBe(200)
      expect((await h.call('GET', '/admin/leaderboards/ranked', { token: t })).json).toEqual({ board: 'ranked', order: 'desc', operator: 'best', reset: 'none', configured: true })

      // Scored without an admin's rules: the defaults, not configured, and just as fixed.
      expect((await h.call('GET', '/admin/leaderboards/unconfigured', { token: t })).json).toEqual({ board: 'unconfigured', order: 'desc', operator: 'best', reset: 'none', configured: false })
      expect((await h.call('PUT', '/admin/leaderboards/unconfigured', { token: t, body: { order: 'asc' } })).status).toBe(409)
      const restated = await h.call('PUT', '/admin/leaderboards/unconfigured', { token: t, body: { order: 'desc', operator: 'best' } })
      expect([restated.status, restated.json.configured]).toEqual([200, true])
    } finally {
      await workers.stop()
    }
  })

  test('a rules change committed between a batch\'s reads and its write: the batch writes nothing, then applies under the new rules', async () => {
    const { owner, messages } = await batchOf([score('race-a', 'p', 10), score('race-a', 'p', 3)])
    // The admin's change lands after the projection read the (default) rules.
    const racing = {
      ...leaderboardsProjection,
      apply: async (db: Db, events: Parameters<typeof leaderboardsProjection.apply>[1]) => {
        const applied = await leaderboardsProjection.apply(db, events)
        await putBoardConfig(h.database.db, 'race-a', { order: 'asc' })
        return applied
      },
    }
    const expected = messages[0].seq - 1
    await expect(applyBatch(worker.db, { ...owner, projection: racing }, expected, messages, new Date())).rejects.toBeInstanceOf(StaleReadError)
    expect(await scores('race-a')).toEqual({})
    const [cp] = await worker.db.select().from(projectionCheckpoints).where(and(eq(projectionCheckpoints.projection, 'leaderboards'), eq(projectionCheckpoints.partition, owner.partition)))
    expect(Number(cp.seq)).toBe(expected)

    // Applied again, as the runner does: under the new rules the lower score is the best.
    const r = await applyBatch(worker.db, owner, expected, messages, new Date())
    expect(r.applied).toBe(2)
    expect(await scores('race-a')).toEqual({ p: 3 })
    await expect(putBoardConfig(h.database.db, 'race-a', { order: 'desc' })).rejects.toBeInstanceOf(Conflict)
  })

  test("a rules change that meets a board's first scores not yet committed waits for them, then is 409", async () => {
    const { owner, messages } = await batchOf([score('race-b', 'p', 5)])
    let put: Promise<unknown> | undefined
    // The shadow of a rebuild runs batches inside a transaction: here that holds the batch's
    // statement uncommitted while the admin's request arrives.
    await worker.db.transaction(async (tx) => {
      await applyBatch(tx as unknown as Db, owner, messages[0].seq - 1, messages, new Date())
      put = putBoardConfig(h.database.db, 'race-b', { operator: 'sum' })
      expect(await settled(put)).toBe(false)
    })
    await expect(put!).rejects.toBeInstanceOf(Conflict)
    const [row] = await h.database.db.select().from(leaderboards).where(eq(leaderboards.board, 'race-b'))
    expect([row.operator, row.hasScores, row.configured]).toEqual(['best', true, false])
    expect(await scores('race-b')).toEqual({ p: 5 })
  })

  test("a board's first scores that meet a rules change not yet committed wait for it, then apply under it", async () => {
    const { owner, messages } = await batchOf([score('race-c', 'p', 10), score('race-c', 'p', 4)])
    const expected = messages[0].seq - 1
    let batch: Promise<unknown> | undefined
    await h.database.db.transaction(async (tx) => {
      await putBoardConfig(tx as unknown as Db, 'race-c', { order: 'asc' })
      // The batch reads the rules while the change is uncommitted: it sees the defaults.
      batch = applyBatch(worker.db, owner, expected, messages, new Date())
      expect(await settled(batch)).toBe(false)
    })
    await expect(batch!).rejects.toBeInstanceOf(StaleReadError)
    expect(await scores('race-c')).toEqual({})
    await applyBatch(worker.db, owner, expected, messages, new Date())
    expect(await scores('race-c')).toEqual({ p: 4 })
  })

  test("a rebuild's shadow batch that loses the race to a rules change is applied again under the new rules", async () => {
    const sent = await h.call('POST', '/v1/events', {
      token: h.ingestToken,
      body: { events: [10, 3, 7].map((value) => ({ type: 'score.submitted', data: { board: 'race-d', player: 'p', score: value } })) },
    })
    expect(sent.status).toBe(202)
    // No live worker runs: the shadow is the first to score race-d, and the rules change lands
    // between its first batch's reads and write.
    let raced = false
    const racing = {
      ...leaderboardsProjection,
      apply: async (db: Db, events: Parameters<typeof leaderboardsProjection.apply>[1]) => {
        const applied = await leaderboardsProjection.apply(db, events)
        if (!raced && events.some((e) => e.event.type === 'score.submitted' && e.event.data.board === 'race-d')) {
          raced = true
          await putBoardConfig(h.database.db, 'race-d', { order: 'asc' })
        }
        return applied
      },
    }
    await runRebuild(
      {
        config: h.env.config,
        db: worker.db,
        js: jetstream(h.nc),
        logger: createLogger('silent'),
        projection: racing,
        progress: async () => {},
        signal: new AbortController().signal,
      },
      { id: 'raced', attempt: 1 },
    )
    expect(raced).toBe(true)
    expect(await scores('race-d')).toEqual({ p: 3 })
    await expect(putBoardConfig(h.database.db, 'race-d', { order: 'desc' })).rejects.toBeInstanceOf(Conflict)
  })
})
