import { afterEach, expect, test } from 'bun:test'
import { asc } from 'drizzle-orm'
import { jetstreamManager } from '@nats-io/jetstream'
import { deadLetters } from '../../../core/db/schema'
import { createLogger } from '../../../core/logger'
import { createMetrics } from '../../../core/metrics'
import { connectNats, topology } from '../../../core/nats'
import { createWorld, publishEvent, storedEvent, type World } from '../testing/harness'
import { startUnclaimedPoller } from './unclaimed'

let world: World | undefined
afterEach(async () => {
  await world?.close()
  world = undefined
})

test('a look at the stream costs two infos, a get per stray subject and per stray, and an info per batch of strays, whatever the number of good events', async () => {
  const w = (world = await createWorld())
  const t = topology(w.config)
  // The poller's own connection: every request it makes is one message out.
  const nc = await connectNats(w.env.vars.NATS_URL, 'unclaimed-test')
  const jsm = await jetstreamManager(nc)
  const goods = async (n: number, from: number) => {
    for (let i = 0; i < n; i++) await publishEvent(w, storedEvent('score.submitted', { board: 'b', player: `p${(from + i) % 7}`, score: from + i }))
  }
  const stray = async (subject: string) => (await w.js.publish(`${t.prefix}.ev.${subject}`, subject)).seq
  /** One poller's first look (stop waits for it), and the requests it sent. */
  const look = async () => {
    const before = nc.stats().outMsgs
    const poller = startUnclaimedPoller({
      db: w.database.db,
      jsm,
      logger: createLogger('silent'),
      stream: t.eventStream,
      prefix: t.prefix,
      partitions: t.partitions,
      batchSize: 500,
      intervalMs: 600_000,
      onFenced: () => {},
      onFatal: (err) => {
        throw err
      },
      metrics: createMetrics(),
    })
    await poller.stop()
    return nc.stats().outMsgs - before
  }
  const letters = async () => (await w.database.db.select().from(deadLetters).orderBy(asc(deadLetters.streamSeq))).map((d) => [d.subject, d.streamSeq])

  const a1 = await stray('a.one')
  await goods(300, 0)
  const b1 = await stray('b.one')
  await goods(10, 300)
  const a2 = await stray('a.one')
  // Three stream infos (the checkpoint's stream identity, the look's last sequence, its subjects),
  // then gets: one per stray subject (its first stray) and one after each stray (the next one, or
  // none), and one info per batch of strays read (still the same stream before it is written).
  expect(await look()).toBe(3 + 2 + 3 + 1)
  expect(await letters()).toEqual([
    [`${t.prefix}.ev.a.one`, a1],
    [`${t.prefix}.ev.b.one`, b1],
    [`${t.prefix}.ev.a.one`, a2],
  ])

  // Ten times fewer good events, one more stray subject: the cost follows the subjects and strays.
  await goods(30, 310)
  const c1 = await stray('c.one')
  expect(await look()).toBe(3 + 3 + 1 + 1)
  expect((await letters()).at(-1)).toEqual([`${t.prefix}.ev.c.one`, c1])
  expect(await letters()).toHaveLength(4)

  // Nothing stored since: a look reads the last sequence, asks for no subjects and reads nothing.
  expect(await look()).toBe(2)
  expect(await letters()).toHaveLength(4)
  await nc.close()
}, 60_000)
