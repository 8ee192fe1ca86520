import { afterEach, describe, expect, test } from 'bun:test'
import { jetstreamManager } from '@nats-io/jetstream'
import { sql } from 'drizzle-orm'
import { loadConfig } from '../../core/config'
import { leaderboards } from '../../core/db/schema'
import { deploymentStreams, ensureStreams, topology } from '../../core/nats'
import { until } from '../../core/testing/wait'
import { boardScores, caughtUp, createWorld, publishEvent, startTestWorker, storedEvent, type World } from '../../stream-workers/src/testing/harness'

// An operator restarts the workers with another FANFARE_STREAM / FANFARE_SUBJECT_PREFIX by mistake
// (or a second deployment is pointed at the same database). Nothing may be applied twice or
// acknowledged and then skipped: the wrong start is refused, naming the variable.
let world: World | undefined
afterEach(async () => {
  await world?.close()
  world = undefined
})

const sendOnes = async (w: World, n: number) => {
  for (let i = 0; i < n; i++) await publishEvent(w, storedEvent('score.submitted', { board: 'tally', player: 'alice', score: 1 }))
}

describe('workers started with another stream or subject prefix', () => {
  test('another FANFARE_STREAM on the same database is refused; the right one then applies nothing twice', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: '1' }))
    await w.database.db.insert(leaderboards).values({ board: 'tally', sortOrder: 'desc', operator: 'sum' })
    const first = await w.startWorker()
    await sendOnes(w, 3)
    await caughtUp(w)
    expect(await boardScores(w, 'tally')).toEqual({ alice: 3 })
    await first.stop()

    const wrongVars = { ...w.env.vars, FANFARE_STREAM: `${w.env.vars.FANFARE_STREAM}_B`, FANFARE_SUBJECT_PREFIX: `${w.env.vars.FANFARE_SUBJECT_PREFIX}_b` }
    const wrong = loadConfig(wrongVars)
    try {
      const err = await startTestWorker({ ...w.env, config: wrong, vars: wrongVars }).then(
        async (workers) => {
          // Not refused: let its runners take the partition (and move the checkpoints) before stopping.
          await new Promise((r) => setTimeout(r, 3000))
          await workers.stop()
          return null
        },
        (e: Error) => e,
      )
      // Back to the right config: the sum must still be 3, not the first three events again.
      const again = await w.startWorker()
      await sendOnes(w, 1)
      await until('the fourth event applied', async () => ((await boardScores(w, 'tally')).alice >= 4 ? true : undefined), 20_000)
      await caughtUp(w)
      expect(await boardScores(w, 'tally')).toEqual({ alice: 4 })
      await again.stop()
      expect(err?.name).toBe('StreamChanged')
      expect(err?.message).toContain('FANFARE_STREAM')
      expect(err?.message).toContain(w.env.vars.FANFARE_STREAM)
    } finally {
      const jsm = await jetstreamManager(w.nc)
      for (const s of deploymentStreams(topology(wrong))) await jsm.streams.delete(s).catch(() => {})
    }
  }, 60_000)

  test('a running worker that finds its checkpoints moved to another stream name stops fatally instead of starting over', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: '1' }))
    await w.database.db.insert(leaderboards).values({ board: 'tally', sortOrder: 'desc', operator: 'sum' })
    const workers = await startTestWorker(w.env)
    await sendOnes(w, 3)
    await caughtUp(w)
    // A second deployment with another stream shares the database and its runners recorded their
    // stream: then this worker's consumers reset (e.g. NATS restarted).
    await w.database.db.execute(sql`update projection_checkpoints set stream = 'OTHER@2026-01-01T00:00:00Z'`)
    const jsm = await jetstreamManager(w.nc)
    for await (const c of await jsm.consumers.list(w.config.FANFARE_STREAM)) await jsm.consumers.delete(w.config.FANFARE_STREAM, c.name)
    await new Promise((r) => setTimeout(r, 3000))
    expect(await boardScores(w, 'tally')).toEqual({ alice: 3 })
    const err = await workers.stop().then(() => null, (e: Error) => e)
    expect(err?.message).toContain('StreamChanged')
  }, 30_000)

  test('the same FANFARE_STREAM with another FANFARE_SUBJECT_PREFIX is refused and leaves the stream subjects alone', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: '1' }))
    const jsm = await jetstreamManager(w.nc)
    const before = (await jsm.streams.info(w.config.FANFARE_STREAM)).config.subjects
    const wrong = loadConfig({ ...w.env.vars, FANFARE_SUBJECT_PREFIX: `${w.env.vars.FANFARE_SUBJECT_PREFIX}_b` })
    const err = await ensureStreams(w.nc, wrong).then(() => null, (e: Error) => e)
    const after = (await jsm.streams.info(w.config.FANFARE_STREAM)).config.subjects
    expect(after).toEqual(before)
    expect(err?.name).toBe('SubjectPrefixChanged')
    expect(err?.message).toContain('FANFARE_SUBJECT_PREFIX')
  })
})
