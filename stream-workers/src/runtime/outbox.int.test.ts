import { afterEach, describe, expect, test } from 'bun:test'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connectBunSql, migrate, openEmbedded, type Database } from '../../../core/db/client'
import { changeOutbox } from '../../../core/db/schema'
import { createLogger } from '../../../core/logger'
import { until } from '../../../core/testing/wait'
import { createWorld, readRuns, type World } from '../testing/harness'
import { startOutboxCleaner, startOutboxSweeper } from './outbox'

let world: World | undefined
const opened: Database[] = []
afterEach(async () => {
  for (const d of opened.splice(0)) await d.close()
  await world?.close()
  world = undefined
})

/** An outbox row as a batch statement writes it: one run of one change, committed `ageMs` ago. */
const leftOver = (channel: string, version: number, ageMs: number) => {
  const at = new Date(Date.now() - ageMs)
  const run = { channel, version, epoch: 'e1', at: at.toISOString(), changes: [{ kind: 'deleted', messageId: `m${version}` }] }
  return { channel, epoch: 'e1', version, payload: JSON.stringify(run), createdAt: at }
}

describe('outbox sweeper', () => {
  test('two sweepers publish each left-over run exactly once, page by page, and empty the outbox', async () => {
    const w = (world = await createWorld())
    // Runs committed by workers that died before publishing them: 3 channels x 40 versions.
    const rows = ['chat:a', 'chat:b', 'leaderboard:c'].flatMap((channel) => Array.from({ length: 40 }, (_, i) => leftOver(channel, i + 1, 10_000)))
    await w.database.db.insert(changeOutbox).values(rows)
    // Each sweeper as in its own worker process: its own database client.
    const sweepers = await Promise.all(
      [1, 2].map(async () => {
        const database = await connectBunSql(w.env.vars.DATABASE_URL, { max: 2 })
        opened.push(database)
        const logger = createLogger('silent')
        return startOutboxSweeper({ db: database.db, js: w.js, prefix: w.config.FANFARE_SUBJECT_PREFIX, partitions: w.config.FANFARE_PARTITIONS, logger, intervalMs: 10, minAgeMs: 2_000, pageSize: 25 })
      }),
    )
    await until('the outbox to be empty', async () => (await w.database.db.select().from(changeOutbox)).length === 0, 20_000, 20)
    // Many more rounds of both sweepers: nothing may be published again.
    await Bun.sleep(300)
    await Promise.all(sweepers.map((s) => s.stop()))

    const published = (await readRuns(w)).map((r) => `${r.channel}@${r.version}`)
    const expected = rows.map((r) => `${r.channel}@${r.version}`)
    expect(published.length).toBe(expected.length)
    expect([...published].sort()).toEqual([...expected].sort())
    expect((await w.database.db.select().from(changeOutbox)).length).toBe(0)
  })

  test('rows younger than the minimum age are left to the runner that wrote them', async () => {
    const w = (world = await createWorld())
    await w.database.db.insert(changeOutbox).values([leftOver('chat:old', 1, 10_000), leftOver('chat:new', 1, 0)])
    const sweeper = startOutboxSweeper({ db: w.database.db, js: w.js, prefix: w.config.FANFARE_SUBJECT_PREFIX, partitions: w.config.FANFARE_PARTITIONS, logger: createLogger('silent'), intervalMs: 10, minAgeMs: 5_000 })
    await until('the old row to be swept', async () => (await w.database.db.select().from(changeOutbox)).length === 1, 20_000, 20)
    await sweeper.stop()
    expect((await w.database.db.select().from(changeOutbox)).map((r) => r.channel)).toEqual(['chat:new'])
    expect((await readRuns(w)).map((r) => r.channel)).toEqual(['chat:old'])
  })

  test('a run whose publish fails keeps its row for a later round', async () => {
    const w = (world = await createWorld())
    await w.database.db.insert(changeOutbox).values([leftOver('chat:x', 1, 10_000), leftOver('chat:x', 2, 10_000)])
    // No stream captures this prefix: every publish fails.
    const sweeper = startOutboxSweeper({ db: w.database.db, js: w.js, prefix: `${w.config.FANFARE_SUBJECT_PREFIX}_nowhere`, partitions: w.config.FANFARE_PARTITIONS, logger: createLogger('silent'), intervalMs: 10 })
    await Bun.sleep(300)
    await sweeper.stop()
    expect((await w.database.db.select().from(changeOutbox)).map((r) => r.version)).toEqual([1, 2])
    expect(await readRuns(w)).toEqual([])
  })

  test('on PGlite (one connection), two sweepers share it and still publish each run once', async () => {
    const w = (world = await createWorld())
    const dir = mkdtempSync(join(tmpdir(), 'fanfare-outbox-'))
    const embedded = await openEmbedded(dir)
    try {
      await migrate(embedded)
      const rows = Array.from({ length: 60 }, (_, i) => leftOver(i % 2 ? 'chat:odd' : 'chat:even', i + 1, 10_000))
      await embedded.db.insert(changeOutbox).values(rows)
      const logger = createLogger('silent')
      const sweepers = [1, 2].map(() => startOutboxSweeper({ db: embedded.db, js: w.js, prefix: w.config.FANFARE_SUBJECT_PREFIX, partitions: w.config.FANFARE_PARTITIONS, logger, intervalMs: 10, pageSize: 7 }))
      await until('the outbox to be empty', async () => (await embedded.db.select().from(changeOutbox)).length === 0, 20_000, 20)
      await Bun.sleep(200)
      await Promise.all(sweepers.map((s) => s.stop()))
      const published = (await readRuns(w)).map((r) => `${r.channel}@${r.version}`)
      expect([...published].sort()).toEqual(rows.map((r) => `${r.channel}@${r.version}`).sort())
    } finally {
      await embedded.close()
      rmSync(dir, { recursive: true, force: true })
    }
    // PGlite's start and migrations alone take 3-8 s on a loaded 2-core machine.
  }, 30_000)
})

describe('outbox cleaner', () => {
  const keyOf = (r: { channel: string; epoch: string; version: number }) => ({ channel: r.channel, epoch: r.epoch, version: r.version })
  const count = (w: World) => w.database.db.select().from(changeOutbox).then((rows) => rows.length)

  test('deletes at once when enough rows wait, after the delay otherwise, and what is left when it stops', async () => {
    const w = (world = await createWorld())
    const rows = Array.from({ length: 12 }, (_, i) => leftOver('chat:c', i + 1, 0))
    await w.database.db.insert(changeOutbox).values(rows)
    const cleaner = startOutboxCleaner({ db: w.database.db, logger: createLogger('silent'), flushRows: 5, maxDelayMs: 60_000 })
    // Five keys: one delete now, not after the (long) delay.
    cleaner.published(rows.slice(0, 5).map(keyOf))
    await until('5 rows deleted', async () => (await count(w)) === 7, 5_000, 10)
    // Fewer than five: nothing before the delay (60 s here); stop deletes them.
    cleaner.published(rows.slice(5, 8).map(keyOf))
    await Bun.sleep(200)
    expect(await count(w)).toBe(7)
    await cleaner.stop()
    expect(await count(w)).toBe(4)
  })

  test('deletes a few rows after the delay, with no timer while nothing waits', async () => {
    const w = (world = await createWorld())
    const rows = Array.from({ length: 3 }, (_, i) => leftOver('chat:d', i + 1, 0))
    await w.database.db.insert(changeOutbox).values(rows)
    const cleaner = startOutboxCleaner({ db: w.database.db, logger: createLogger('silent'), maxDelayMs: 50 })
    cleaner.published(rows.map(keyOf))
    await until('the rows deleted', async () => (await count(w)) === 0, 5_000, 10)
    await cleaner.stop()
  })
})
