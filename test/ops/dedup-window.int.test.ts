import { afterEach, describe, expect, test } from 'bun:test'
import { eq } from 'drizzle-orm'
import { chatMessages, leaderboards } from '../../core/db/schema'
import { boardScores, caughtUp, createWorld, publishEvent, storedEvent, type World } from '../../stream-workers/src/testing/harness'

// What README promises for a resend (same publisher, same id): within FANFARE_DEDUP_WINDOW_MS it
// is stored once (`duplicate: true`) and applied once. Past the window it is another event to
// JetStream: this pins what the read models then do, as README "Events" states it.
let world: World | undefined
afterEach(async () => {
  await world?.close()
  world = undefined
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('a resend just inside and just past the de-duplication window', () => {
  test('inside: duplicate and applied once; past: stored again, a sum board counts it again, a chat post does not', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: '1', FANFARE_DEDUP_WINDOW_MS: '1000' }))
    await w.database.db.insert(leaderboards).values({ board: 'tally', sortOrder: 'desc', operator: 'sum' })
    const workers = await w.startWorker()
    const score = storedEvent('score.submitted', { board: 'tally', player: 'alice', score: 1 }, 'resent-score')
    const post = storedEvent('chat.message.posted', { room: 'lobby', user: 'ann', text: 'hello' }, 'resent-post')

    const first = [await publishEvent(w, score), await publishEvent(w, post)]
    expect(first.map((a) => a.duplicate)).toEqual([false, false])
    await sleep(700) // just inside the 1 s window
    const inside = [await publishEvent(w, score), await publishEvent(w, post)]
    expect(inside.map((a) => a.duplicate)).toEqual([true, true])
    expect(inside.map((a) => a.seq)).toEqual(first.map((a) => a.seq))
    await caughtUp(w)
    expect(await boardScores(w, 'tally')).toEqual({ alice: 1 })

    await sleep(1500) // past the window (counted from the first store)
    const past = [await publishEvent(w, score), await publishEvent(w, post)]
    expect(past.map((a) => a.duplicate)).toEqual([false, false])
    await caughtUp(w)
    expect(await boardScores(w, 'tally')).toEqual({ alice: 2 })
    const posts = await w.database.db.select().from(chatMessages).where(eq(chatMessages.room, 'lobby'))
    expect(posts.map((m) => [m.id, m.text])).toEqual([['resent-post', 'hello']])
    await workers.stop()
  }, 30_000)
})
