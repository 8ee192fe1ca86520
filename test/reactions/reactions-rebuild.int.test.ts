import { afterEach, describe, expect, test } from 'bun:test'
import { asc, like, sql } from 'drizzle-orm'
import { createHarness, waitRebuild, type ApiHarness } from '../../api/src/test-support'
import { channelVersions, reactionTotals } from '../../core/db/schema'
import { until } from '../../core/testing/wait'
import { startTestWorker, untilCaughtUp } from '../../stream-workers/src/testing/harness'

let h: ApiHarness | undefined
let closers: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const close of closers) await close().catch(() => {})
  closers = []
  await h?.close()
  h = undefined
})

const EMOJIS = ['👏', '❤️', '🔥', '🇫🇷']
let counter = 0

/** Sends `n` reactions over REST (a key may react too), and some of them twice; returns them once each. */
async function react(h: ApiHarness, n: number) {
  const events = Array.from({ length: n }, () => {
    const i = counter++
    return { id: `r${i}`, type: 'reaction.sent', data: { stream: `s${i % 5}`, emoji: EMOJIS[(i * 7) % EMOJIS.length] } }
  })
  const r = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { events } })
  expect(r.status).toBe(202)
  // A tenth of them sent again with their ids (as after a lost answer): counted once, live and rebuilt.
  const again = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { events: events.filter((_, i) => i % 10 === 0) } })
  expect(again.status).toBe(202)
  return events.map((e) => e.data)
}

const totals = async (h: ApiHarness) =>
  (await h.database.db.select().from(reactionTotals).orderBy(asc(reactionTotals.stream), asc(reactionTotals.emoji))).map((r) => `${r.stream} ${r.emoji} ${r.count}`)

describe('rebuilding the reactions projection', () => {
  test('a rebuild while reactions (and resends) keep coming ends with the totals of every reaction, each counted once, under new epochs', async () => {
    h = await createHarness({ FANFARE_PARTITIONS: '4', FANFARE_LEASE_TTL_MS: '1500', FANFARE_BATCH_SIZE: '100' })
    const hh = h
    for (let i = 0; i < 2; i++) {
      const w = await startTestWorker(hh.env)
      closers.push(() => w.stop())
    }
    const sent: { stream: string; emoji: string }[] = []
    for (let i = 0; i < 4; i++) sent.push(...(await react(hh, 500)))
    const caughtUp = () => untilCaughtUp({ config: hh.env.config, db: hh.database.db, nc: hh.nc })
    await caughtUp()
    const epochs = async () => Object.fromEntries((await hh.database.db.select().from(channelVersions).where(like(channelVersions.channel, 'reactions:%'))).map((r) => [r.channel, r.epoch]))
    const before = await epochs()

    let flowing = true
    const traffic = (async () => {
      while (flowing) {
        sent.push(...(await react(hh, 100)))
        await Bun.sleep(50)
      }
    })()
    closers.unshift(async () => {
      flowing = false
      await traffic.catch(() => {})
    })
    const job = await hh.call('POST', '/admin/projections/reactions/rebuild', { token: hh.adminToken })
    expect(job.status).toBe(202)
    await waitRebuild(hh, 'reactions')
    flowing = false
    await traffic
    sent.push(...(await react(hh, 100)))
    await caughtUp()

    const expected = new Map<string, number>()
    for (const { stream, emoji } of sent) expected.set(`${stream} ${emoji}`, (expected.get(`${stream} ${emoji}`) ?? 0) + 1)
    expect(await totals(hh)).toEqual([...expected].sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, n]) => `${k} ${n}`))
    const after = await epochs()
    for (const channel of Object.keys(before)) expect(after[channel]).not.toBe(before[channel])
    // The job's schemas are dropped just after it is saved done (a takeover needs the retired one until then).
    await until('no rebuild or retired schema left', async () => {
      const schemas = await hh.database.db.execute(sql`select nspname from pg_namespace where nspname like 'rebuild\\_%' or nspname like 'retired\\_%'`)
      return [...(schemas as unknown as unknown[])].length === 0
    })
  }, 60_000)
})
