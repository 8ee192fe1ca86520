import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { sql } from 'drizzle-orm'
import { jetstream } from '@nats-io/jetstream'
import { deadLetters, leaderboards } from '../../../../core/db/schema'
import { replaySubject, type ReplayRequest } from '../../../../core/dead-letters'
import { until } from '../../../../test/e2e/harness'
import { startTestWorker } from '../../../../stream-workers/src/testing/harness'
import { leaderboardsProjection } from '../../../../stream-workers/src/projections/leaderboards/apply'
import type { Projection, SequencedEvent } from '../../../../stream-workers/src/projections/types'
import type { Workers } from '../../../../stream-workers/src/workers'
import { createHarness, type ApiHarness } from '../../test-support'

/**
 * Replay and discard against a real worker. The "bug": a leaderboards projection that refuses
 * every score of board `fixme` while `broken` is set (a dead letter, like a real refusal), and
 * applies them once the test "fixes" it.
 */
describe('POST /admin/dead-letters/:id/replay, DELETE /admin/dead-letters/:id', () => {
  let h: ApiHarness
  let worker: Workers
  let broken = true
  /** While set, only the events it picks are refused (a bug fixed for the others). */
  let refuseOnly: ((e: SequencedEvent) => boolean) | undefined
  let failures = 0
  /** While set, Postgres refuses the write of player `cast`'s scores (a data error, not a refusal by the projection). */
  let castFails = false
  /** While set, a batch refusing an event takes this long first (a worker behind, or a slow batch). */
  let slowRefusalMs = 0
  /** The stored time each event of board `fixme` was applied or refused with, in order. */
  const storedAtSeen = new Map<string, number[]>()
  const buggy: Projection = {
    ...leaderboardsProjection,
    apply: async (db, events) => {
      for (const e of events) if (e.event.type === 'score.submitted' && e.event.data.board === 'fixme') storedAtSeen.set(e.event.id, [...(storedAtSeen.get(e.event.id) ?? []), e.storedAt.getTime()])
      const bad = events.filter((e) => (broken || refuseOnly?.(e)) && e.event.type === 'score.submitted' && e.event.data.board === 'fixme')
      if (bad.length > 0 && slowRefusalMs > 0) await Bun.sleep(slowRefusalMs)
      const applied = await leaderboardsProjection.apply(db, events.filter((e) => !bad.includes(e)))
      const refused = [...(applied.refused ?? []), ...bad.map((e) => ({ seq: e.seq, reason: `bug 42 (failure ${++failures})` }))]
      const write = applied.write
      if (!castFails || !write || !events.some((e) => e.event.type === 'score.submitted' && e.event.data.player === 'cast')) return { ...applied, refused }
      // A write Postgres refuses for the event's data: invalid input syntax for type integer (22P02).
      return { ...applied, refused, write: (when) => [...[write(when)].flat(), sql`update ${leaderboards} set board = board where board = ('cast'::text::int)::text and ${when}`] }
    },
  }

  const t = () => ({ token: h.adminToken })
  const submit = async (player: string, score: number) => {
    const r = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { type: 'score.submitted', data: { board: 'fixme', player, score } } })
    expect(r.status).toBe(202)
    return r.json.results[0].id as string
  }
  const letterOf = (eventId: string) =>
    until(`dead letter of ${eventId}`, async () => {
      const r = await h.call('GET', '/admin/dead-letters', t())
      return (r.json.deadLetters as { id: number; eventId: string; reason: string; createdAt: string }[]).find((d) => d.eventId === eventId)
    }, 15_000, 50)
  const board = async () => (await h.call('GET', '/v1/leaderboards/fixme')).json.entries as { player: string; score: number }[]
  const audit = async () => (await h.call('GET', '/admin/audit', t())).json.entries as { action: string; actor: string; target: string; details: any }[]

  beforeAll(async () => {
    h = await createHarness({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '1500' })
    worker = await startTestWorker(h.env, { projections: [buggy] })
    // Sum: a second application would show as a doubled score.
    expect((await h.call('PUT', '/admin/leaderboards/fixme', { ...t(), body: { operator: 'sum' } })).status).toBe(200)
  })
  afterAll(async () => {
    await worker.stop().catch(() => {})
    await h.close()
  })

  test('admin:write only', async () => {
    for (const [method, path] of [['POST', '/admin/dead-letters/1/replay'], ['DELETE', '/admin/dead-letters/1']]) {
      expect((await h.call(method, path)).status).toBe(401)
      expect((await h.call(method, path, { token: h.ingestToken })).status).toBe(403)
    }
    expect((await h.call('POST', '/admin/dead-letters/0/replay', t())).status).toBe(422)
    const missing = await h.call('DELETE', '/admin/dead-letters/999999', t())
    expect([missing.status, missing.json.error.code]).toEqual([404, 'unknown_dead_letter'])
  })

  test('a replay that still fails keeps the dead letter with the new reason; after the fix it applies exactly once', async () => {
    const eventId = await submit('ann', 7)
    const letter = await letterOf(eventId)
    expect(letter.reason).toMatch(/^bug 42/)

    const again = await h.call('POST', `/admin/dead-letters/${letter.id}/replay`, t())
    expect([again.status, again.json.error.code]).toEqual([409, 'still_failing'])
    const kept = await letterOf(eventId)
    expect(kept.id).toBe(letter.id)
    expect(kept.reason).not.toBe(letter.reason) // the new failure's reason
    expect(kept.reason).toBe(again.json.error.details.reason)
    expect(await board()).toEqual([])

    broken = false
    // Three at once: the owner takes them in turn, one applies, the others find it gone.
    const tries = await Promise.all([1, 2, 3].map(() => h.call('POST', `/admin/dead-letters/${letter.id}/replay`, t())))
    expect(tries.map((r) => r.status).sort()).toEqual([200, 404, 404])
    const ok = tries.find((r) => r.status === 200)!
    expect(ok.json).toMatchObject({ outcome: 'replayed', deadLetter: { id: letter.id, eventId, projection: 'leaderboards' } })
    expect((await board()).map((e) => [e.player, e.score])).toEqual([['ann', 7]])
    const left = await h.call('GET', '/admin/dead-letters', t())
    expect(left.json.deadLetters.find((d: any) => d.id === letter.id)).toBeUndefined()
    // Later events apply on top of the replayed one (sum 7 + 3).
    await submit('ann', 3)
    await until('the next score applies', async () => (await board())[0]?.score === 10, 15_000, 50)

    const actions = (await audit()).filter((e) => e.target === `dead_letter:${letter.id}`).map((e) => e.action)
    expect(actions).toEqual(['dead_letter.replayed', 'dead_letter.replay_failed'])
  }, 60_000)

  test('a replay applies the event at the time JetStream stored it, not when it was dead-lettered', async () => {
    // Periods (a daily board), a match's startedAt and a reaction's window go by the stored time;
    // the replay used the dead letter's created_at, off by however far the worker was behind (and
    // by days for a dead letter a rebuild wrote), so a rebuild would later count it elsewhere.
    broken = true
    slowRefusalMs = 1500
    const eventId = await submit('eve', 2)
    const letter = await letterOf(eventId)
    slowRefusalMs = 0
    broken = false
    const ok = await h.call('POST', `/admin/dead-letters/${letter.id}/replay`, t())
    expect([ok.status, ok.json.outcome]).toEqual([200, 'replayed'])
    const [refusedAt, replayedAt] = storedAtSeen.get(eventId)!
    expect(Date.parse(letter.createdAt) - refusedAt).toBeGreaterThanOrEqual(1000)
    expect(replayedAt).toBe(refusedAt)
  }, 30_000)

  test('a replay its asker stopped waiting for (a slow owner) is still audited, once, with what it did', async () => {
    broken = true
    const eventId = await submit('late', 4)
    const letter = await letterOf(eventId)
    const { partition } = (await h.call('GET', '/admin/dead-letters', t())).json.deadLetters.find((d: any) => d.id === letter.id)
    broken = false
    // The dead letter's row held elsewhere: the owner's replay waits for it, longer than its asker
    // waits (the API gives up after 15 s; here, as the API would, a request with a short timeout).
    let release!: () => void
    let locked!: () => void
    const isLocked = new Promise<void>((ok) => (locked = ok))
    const holder = h.database.db.transaction(async (tx) => {
      await tx.execute(sql`select id from dead_letters where id = ${letter.id} for update`)
      locked()
      await new Promise<void>((ok) => (release = ok))
    })
    await isLocked
    const subject = replaySubject(h.env.config.FANFARE_SUBJECT_PREFIX, 'leaderboards', partition)
    const request: ReplayRequest = { id: letter.id, actor: 'admin' }
    const asked = await h.nc.request(subject, JSON.stringify(request), { timeout: 500 }).then(() => 'answered', () => 'gave up')
    expect(asked).toBe('gave up')
    release()
    await holder
    await until('the late replay applied', async () => (await board()).find((e) => e.player === 'late')?.score === 4, 15_000, 50)
    const entries = await until('its audit entry', async () => {
      const mine = (await audit()).filter((e) => e.target === `dead_letter:${letter.id}`)
      return mine.length > 0 ? mine : undefined
    }, 5_000, 50)
    expect(entries).toMatchObject([{ action: 'dead_letter.replayed', actor: 'admin', details: { eventId, projection: 'leaderboards', partition } }])
  }, 30_000)

  test('a message on a subject no projection consumes, published past the API, is listed with its subject and payload; a replay still fails; a discard removes it', async () => {
    const subject = `${h.env.config.FANFARE_SUBJECT_PREFIX}.ev.0.nobody.listens`
    const seq = (await jetstream(h.nc).publish(subject, '{"id":"stray-1","anything":true}')).seq
    const letter = await letterOf('stray-1')
    expect(letter).toMatchObject({ projection: 'unclaimed', partition: 0, streamSeq: seq, subject, payload: '{"id":"stray-1","anything":true}' })
    expect(letter.reason).toContain(`no projection consumes subject "${subject}"`)
    const again = await h.call('POST', `/admin/dead-letters/${letter.id}/replay`, t())
    expect([again.status, again.json.error.code]).toEqual([409, 'still_failing'])
    expect(again.json.error.details.reason).toBe(letter.reason)
    expect((await h.call('DELETE', `/admin/dead-letters/${letter.id}`, t())).status).toBe(200)
    expect((await h.call('GET', '/admin/dead-letters', t())).json.deadLetters.find((d: { id: number }) => d.id === letter.id)).toBeUndefined()
  }, 30_000)

  test("an unclaimed dead letter whose subject a projection consumes now (written by an older version) replays as gone: that projection's consumer takes it from the stream", async () => {
    const subject = `${h.env.config.FANFARE_SUBJECT_PREFIX}.ev.0.score.submitted`
    const [row] = await h.database.db
      .insert(deadLetters)
      .values({ projection: 'unclaimed', partition: 0, streamSeq: 1, subject, eventId: 'older', reason: 'no projection consumes subject (an older version)', payload: '{}' })
      .returning()
    const r = await h.call('POST', `/admin/dead-letters/${row.id}/replay`, t())
    expect([r.status, r.json.outcome]).toEqual([200, 'replayed'])
    expect((await h.call('GET', '/admin/dead-letters', t())).json.deadLetters.find((d: { id: number }) => d.id === row.id)).toBeUndefined()
  }, 30_000)

  test('discard deletes it once and is audited', async () => {
    broken = true
    const eventId = await submit('bob', 5)
    const letter = await letterOf(eventId)
    const gone = await h.call('DELETE', `/admin/dead-letters/${letter.id}`, t())
    expect(gone.status).toBe(200)
    expect(gone.json).toMatchObject({ id: letter.id, eventId, reason: letter.reason })
    expect((await h.call('DELETE', `/admin/dead-letters/${letter.id}`, t())).status).toBe(404)
    expect((await h.call('POST', `/admin/dead-letters/${letter.id}/replay`, t())).status).toBe(404)
    const entry = (await audit()).find((e) => e.target === `dead_letter:${letter.id}`)
    expect(entry).toMatchObject({ action: 'dead_letter.discarded', details: { eventId, reason: letter.reason } })
    broken = false
    expect((await board()).find((e) => e.player === 'bob')).toBeUndefined()
  }, 30_000)

  test('a rebuild after the fix applies the dead-lettered event and removes the dead letter; one still failing stays', async () => {
    broken = true
    const fixedLater = await submit('cy', 4)
    const letter = await letterOf(fixedLater)
    // Still failing at the rebuild: its dead letter is the rebuild's, with today's reason.
    const keep = (e: { event: { data: unknown } }) => (e.event.data as { player: string }).player === 'dee'
    const stillBroken = await submit('dee', 1)
    const before = await letterOf(stillBroken)
    broken = false
    refuseOnly = keep
    expect((await h.call('POST', '/admin/projections/leaderboards/rebuild', t())).status).toBe(202)
    await until('the rebuild is done', async () => (await h.call('GET', '/admin/projections/leaderboards/rebuild', t())).json.state === 'done', 30_000, 100)
    refuseOnly = undefined
    const letters = (await h.call('GET', '/admin/dead-letters', t())).json.deadLetters as { id: number; eventId: string; reason: string }[]
    expect(letters.find((d) => d.eventId === fixedLater)).toBeUndefined()
    const again = letters.find((d) => d.eventId === stillBroken)!
    expect(again.reason).toMatch(/^bug 42/)
    expect(again.reason).not.toBe(before.reason)
    // Still failing, it is the same dead letter: the id an admin holds still replays it.
    expect(again.id).toBe(before.id)
    // Applied once by the rebuild; replaying the old dead letter cannot apply it again.
    expect((await board()).find((e) => e.player === 'cy')?.score).toBe(4)
    expect((await h.call('POST', `/admin/dead-letters/${letter.id}/replay`, t())).status).toBe(404)
  }, 60_000)

  test('a replay of an event Postgres still refuses for its data is still_failing with its reason; once it takes it, it applies', async () => {
    broken = false
    castFails = true
    const eventId = await submit('cast', 6)
    const letter = await letterOf(eventId)
    expect(letter.reason).toContain('22P02')
    const again = await h.call('POST', `/admin/dead-letters/${letter.id}/replay`, t())
    expect([again.status, again.json.error.code]).toEqual([409, 'still_failing'])
    expect(again.json.error.details.reason).toContain('22P02')
    const kept = await letterOf(eventId)
    expect([kept.id, kept.reason]).toEqual([letter.id, again.json.error.details.reason])
    expect((await board()).find((e) => e.player === 'cast')).toBeUndefined()
    castFails = false
    const ok = await h.call('POST', `/admin/dead-letters/${letter.id}/replay`, t())
    expect([ok.status, ok.json.outcome]).toEqual([200, 'replayed'])
    expect((await board()).find((e) => e.player === 'cast')?.score).toBe(6)
  }, 30_000)

  test('503 no_worker when no worker holds the partition; nothing changes', async () => {
    await worker.stop()
    const [row] = await h.database.db
      .insert(deadLetters)
      .values({ projection: 'leaderboards', partition: 1, streamSeq: 1, subject: 'x', eventId: null, reason: 'r', payload: '{}' })
      .returning({ id: deadLetters.id })
    const r = await h.call('POST', `/admin/dead-letters/${row.id}/replay`, t())
    expect([r.status, r.json.error.code]).toEqual([503, 'no_worker'])
    expect((await h.call('GET', '/admin/dead-letters', t())).json.deadLetters[0]).toMatchObject({ id: row.id, reason: 'r' })
  }, 30_000)
})
