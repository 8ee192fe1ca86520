import { afterEach, describe, expect, test } from 'bun:test'
import { asc } from 'drizzle-orm'
import { mintUserToken } from '../../api/src/auth/mint'
import { rootKey } from '../../api/src/auth/principal'
import { createIngest } from '../../api/src/modules/events/service'
import { createHarness, waitRebuild, type ApiHarness } from '../../api/src/test-support'
import { channelVersions, polls, pollVotes, streams, streamViewers } from '../../core/db/schema'
import { createLogger } from '../../core/logger'
import { startTestWorker, untilCaughtUp } from '../../stream-workers/src/testing/harness'

let h: ApiHarness | undefined
const closers: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const close of closers.splice(0)) await close().catch(() => {})
  await h?.close()
  h = undefined
})

/** The streams and polls read models, every row, in a stable order. */
async function models(h: ApiHarness) {
  const db = h.database.db
  return {
    streams: await db.select().from(streams).orderBy(asc(streams.stream)),
    viewers: await db.select().from(streamViewers).orderBy(asc(streamViewers.stream), asc(streamViewers.user)),
    polls: await db.select().from(polls).orderBy(asc(polls.poll)),
    votes: await db.select().from(pollVotes).orderBy(asc(pollVotes.poll), asc(pollVotes.voter)),
  }
}

describe('rebuilding the streams and polls projections', () => {
  test('a rebuild of each equals the live model, and the live runners go on from it', async () => {
    const hh = (h = await createHarness({ FANFARE_PARTITIONS: '3', FANFARE_LEASE_TTL_MS: '1500', FANFARE_BATCH_SIZE: '7' }))
    const worker = await startTestWorker(hh.env)
    closers.push(() => worker.stop())
    // Samples come from the API nodes' own principal, which no request can be: publish as it.
    const ingest = createIngest({ config: hh.env.config, nc: hh.nc, logger: createLogger('silent'), rooms: hh.deps.security.rooms })
    const sample = (stream: string, viewers: number, users: string[]) => ingest.publish([{ type: 'stream.viewers.sampled', data: { stream, viewers, users } }], rootKey('system'))
    const post = async (events: unknown[], token = hh.ingestToken) => {
      const r = await hh.call('POST', '/v1/events', { token, body: { events } })
      expect(r.status).toBe(202)
    }
    const voter = (sub: string) => mintUserToken(hh.env.vars.FANFARE_JWT_SECRET, { sub })

    for (const s of ['s1', 's2', 's3']) await post([{ type: 'stream.started', data: { stream: s, title: `Show ${s}`, category: 'games' } }])
    for (let i = 0; i < 12; i++) await sample(`s${1 + (i % 3)}`, 3 + ((i * 5) % 11), [`u${i % 5}`, `u${(i * 3) % 7}`])
    await post([{ type: 'stream.updated', data: { stream: 's2', title: 'Renamed' } }, { type: 'stream.ended', data: { stream: 's3' } }])
    await post([{ type: 'stream.started', data: { stream: 's3', title: 'Back' } }])
    await sample('s3', 2, ['u0', 'u9'])
    await post([
      { type: 'poll.opened', data: { stream: 's1', poll: 'q1', question: 'One?', options: ['a', 'b', 'c'], closesAt: new Date(Date.now() + 3600_000).toISOString() } },
      { type: 'poll.opened', data: { stream: 's2', poll: 'q2', question: 'Two?', options: ['x', 'y'] } },
    ])
    for (let i = 0; i < 15; i++) {
      const token = await voter(`v${i % 6}`)
      await post([{ type: 'poll.voted', data: { poll: ['q1', 'q2', 'q3'][i % 3], option: i % 4 } }], token)
    }
    await post([{ type: 'poll.closed', data: { poll: 'q2' } }])
    await untilCaughtUp({ config: hh.env.config, db: hh.database.db, nc: hh.nc })
    const live = await models(hh)
    expect(live.streams.length).toBe(3)
    expect(live.polls.map((p) => [p.poll, p.status])).toEqual([
      ['q1', 'open'],
      ['q2', 'closed'],
      ['q3', 'pending'],
    ])
    const epochs = new Map((await hh.database.db.select().from(channelVersions)).map((r) => [r.channel, r.epoch]))

    for (const name of ['streams', 'polls']) {
      const r = await hh.call('POST', `/admin/projections/${name}/rebuild`, { token: hh.adminToken })
      expect(r.status).toBe(202)
      await waitRebuild(hh, name)
    }
    expect(await models(hh)).toEqual(live)
    // Every stream and poll channel starts a new history: subscribers re-sync.
    const after = await hh.database.db.select().from(channelVersions)
    const rebuilt = after.filter((r) => r.channel.startsWith('stream:') || r.channel.startsWith('poll:'))
    expect(rebuilt.length).toBeGreaterThan(0)
    for (const r of rebuilt) expect(r.epoch).not.toBe(epochs.get(r.channel))

    // The live runners continue on the rebuilt tables: u0 was counted in s1's broadcast already, u42 is new.
    await sample('s1', 30, ['u0', 'u42'])
    await post([{ type: 'poll.voted', data: { poll: 'q1', option: 0 } }], await voter('newcomer'))
    await untilCaughtUp({ config: hh.env.config, db: hh.database.db, nc: hh.nc })
    const next = await models(hh)
    const s1 = (m: typeof live) => m.streams.find((s) => s.stream === 's1')!
    expect(s1(next)).toMatchObject({ viewers: 30, peakViewers: 30, uniqueViewers: s1(live).uniqueViewers + (live.viewers.some((v) => v.stream === 's1' && v.user === 'u0') ? 1 : 2) })
    const q1 = (m: typeof live) => m.polls.find((p) => p.poll === 'q1')!
    expect(q1(next).votes[0]).toBe(q1(live).votes[0] + 1)
  }, 120_000)
})
