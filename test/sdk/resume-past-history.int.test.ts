import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { createClient, type Client } from '../../client/src'
import { tcpProxy, type TcpProxy } from '../../core/testing/tcp-proxy'
import { freePort, until } from '../e2e/harness'
import { startDeployment, type Deployment } from './deployment'

/** Change messages a leaderboard channel's change stream keeps here (each one or more updates). */
const KEPT = 5

/**
 * Field notes, complaint 3, as an application sees it through the SDK: "a recovered flag that
 * lies, or no way to tell history was exceeded". A client follows a board through a proxy that the
 * test cuts (the client reconnects on its own once it is restored) while scores go on. Offline for
 * fewer changes than the channel keeps, the client is caught up update by update (`onUpdate` for
 * each missed version, in order; no re-sync). Offline for more, it is told plainly: one `onResync`
 * and an `onState` marked `resync` at the current version, with no update of the missed range
 * passed off as the whole story. Either way it ends equal to the read model.
 *
 * The first fails on a hub that never resumes (every reconnect a snapshot); the second on an SDK
 * that replaces the state without saying so (`onResync` never called): both checked on copies.
 */
describe('client SDK: offline within and past the kept history', () => {
  let d: Deployment
  const clients: Client[] = []
  const proxies: TcpProxy[] = []
  beforeAll(async () => {
    d = await startDeployment({ apis: 1, workers: 1, vars: { FANFARE_HISTORY_SIZE_LEADERBOARD: String(KEPT) } })
  }, 60_000)
  afterAll(async () => {
    for (const c of clients) c.close()
    for (const p of proxies) p.close()
    await d?.stop()
  })

  /**
   * A board with one score, a client following it through a proxy, and a watcher connected
   * directly; `seen`: what the client's app was told since the last cut.
   */
  async function follow(board: string) {
    const channel = `leaderboard:${board}` as const
    const target = new URL(d.urls[0])
    const proxy = tcpProxy({ port: freePort(), target: { host: target.hostname, port: Number(target.port) } })
    proxies.push(proxy)
    const opts = { token: () => d.token('viewer'), backoff: { minMs: 50, maxMs: 200 }, pingIntervalMs: 500, pongTimeoutMs: 500 }
    const client = createClient({ urls: [`http://127.0.0.1:${proxy.port}`], ...opts })
    const watcher = createClient({ urls: [d.urls[0]], ...opts })
    clients.push(client, watcher)
    const seen = { updates: [] as number[], resyncs: 0, states: [] as { version: number; resync: boolean }[] }
    const sub = client.subscribe(channel, {
      onUpdate: (_, i) => void seen.updates.push(...Array.from({ length: i.version - i.from + 1 }, (_, k) => i.from + k)),
      onResync: () => void seen.resyncs++,
      onState: (_, i) => void seen.states.push({ version: i.version, resync: i.resync }),
    })
    const watching = watcher.subscribe(channel)
    let score = 0
    const post = async (n: number) => {
      const events = Array.from({ length: n }, () => ({ type: 'score.submitted', data: { board, player: `p${score % 4}`, score: ++score } }))
      expect((await d.call('POST', '/v1/events', { events })).status).toBe(202)
    }
    await post(1)
    await until('live with the first score', () => sub.status === 'live' && sub.version === 1 && watching.version === 1, 15_000)
    /** Cuts the client off, commits `n` scores (the watcher has them all), then lets it reconnect. */
    const offlineFor = async (n: number) => {
      const before = sub.version
      // What the app is told from here on.
      seen.updates.length = 0
      seen.states.length = 0
      seen.resyncs = 0
      proxy.cut()
      await until('the client noticed', () => client.status.state !== 'connected' && sub.status !== 'live')
      // One at a time, each applied before the next: each its own change message (a batch of
      // changes to one channel is one message, and the stream keeps KEPT messages per channel).
      for (let i = 1; i <= n; i++) {
        await post(1)
        await until(`the watcher has version ${before + i}`, () => watching.version === before + i, 15_000)
      }
      expect(sub.version).toBe(before)
      proxy.restore()
      await until('the client is live again', () => sub.status === 'live' && sub.version === before + n, 15_000)
    }
    const equalsReadModel = async () => {
      const rest = (await d.call('GET', `/v1/leaderboards/${board}?limit=100`)).json
      const held = (sub.state as any).entries.map(({ reachedSeq: _, ...e }: any) => e)
      expect(held).toEqual(rest.entries)
      expect(sub.state).toEqual(watching.state)
    }
    return { sub, seen, offlineFor, equalsReadModel }
  }

  test(`offline for ${KEPT - 2} changes: each one replayed in order, no re-sync`, async () => {
    const { seen, offlineFor, equalsReadModel } = await follow(`kept_${Math.random().toString(36).slice(2, 8)}`)
    const missed = KEPT - 2
    await offlineFor(missed)
    expect(seen.updates).toEqual(Array.from({ length: missed }, (_, i) => 2 + i))
    expect(seen.resyncs).toBe(0)
    expect(seen.states.filter((s) => s.resync)).toEqual([])
    await equalsReadModel()
  }, 60_000)

  test(`offline for ${KEPT * 3} changes (the channel keeps ${KEPT}): told with a re-sync, never a part`, async () => {
    const { seen, offlineFor, equalsReadModel } = await follow(`past_${Math.random().toString(36).slice(2, 8)}`)
    await offlineFor(KEPT * 3)
    // Nothing of the missed range came as updates: the state was replaced, and the app was told.
    expect(seen.updates).toEqual([])
    expect(seen.resyncs).toBe(1)
    expect(seen.states.at(-1)).toEqual({ version: 1 + KEPT * 3, resync: true })
    await equalsReadModel()
  }, 60_000)
})
