import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { until, WsClient } from '../e2e/harness'
import { startDeployment, type Deployment } from '../sdk/deployment'

/**
 * A board's rules change while it has no scores, and people may be watching it already (a new
 * season's board, subscribed to before an admin set it up). Their snapshot shows the old rules: the
 * order, and the period (none) with no end. The first scores then carry a period their snapshot
 * does not show, which clients are told to skip: without the restart they showed an empty board
 * for good. An API node and a worker (with its outbox sweeper) in processes of their own; a client
 * applies frames as the README says.
 */
describe('rules changed on a watched board', () => {
  let d: Deployment
  const clients: WsClient[] = []
  beforeAll(async () => {
    d = await startDeployment({ apis: 1, workers: 1, vars: { FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '1500' } })
  }, 60_000)
  afterAll(async () => {
    for (const c of clients) c.close()
    await d?.stop()
  })

  const admin = () => ({ token: d.env.vars.FANFARE_ADMIN_TOKEN })
  const open = async () => {
    const c = await WsClient.open(`${d.urls[0].replace('http://', 'ws://')}/v1/ws`)
    clients.push(c)
    return c
  }
  /** What a client shows: its latest snapshot, with the updates after it of the snapshot's period. */
  function shown(c: WsClient, channel: string) {
    let board: any
    let version = -1
    for (const f of c.of(channel)) {
      if (f.op === 'snapshot') {
        board = structuredClone(f.data)
        version = f.version
      } else if (f.op === 'update') {
        if (f.version !== version + 1) throw new Error(`update ${f.version} after ${version}`)
        version = f.version
        if ((f.data.period ?? null) !== board.period) continue
        board.entries = board.entries.filter((e: any) => e.player !== f.data.player)
        board.entries.push({ player: f.data.player, score: f.data.score })
        board.entries.sort((a: any, b: any) => (board.order === 'asc' ? a.score - b.score : b.score - a.score))
      }
    }
    return { order: board?.order, period: board?.period, entries: (board?.entries ?? []).map((e: any) => `${e.player}=${e.score}`), version }
  }

  test('its subscribers re-sync to the new rules, live or resuming; a scored board keeps its history', async () => {
    const channel = 'leaderboard:season-5'
    const watcher = await open()
    watcher.send({ op: 'subscribe', ref: 'w', channel })
    await until('the first snapshot', () => watcher.of(channel).length > 0)
    const before = watcher.of(channel)[0]
    expect([before.data.order, before.data.period ?? null, before.version]).toEqual(['desc', null, 0])
    const leaving = await open()
    leaving.send({ op: 'subscribe', ref: 'l', channel })
    await until('the leaving client snapshot', () => leaving.of(channel).length > 0)
    leaving.close()

    const put = await d.call('PUT', '/admin/leaderboards/season-5', { order: 'asc', reset: 'daily' }, admin())
    expect(put.status).toBe(200)
    const sent = await d.call('POST', '/v1/events', {
      events: [
        { type: 'score.submitted', data: { board: 'season-5', player: 'ann', score: 30 } },
        { type: 'score.submitted', data: { board: 'season-5', player: 'bob', score: 20 } },
      ],
    })
    expect(sent.status).toBe(202)

    const rest = async () => {
      const page = await d.call('GET', '/v1/leaderboards/season-5')
      return { order: page.json.order, period: page.json.period, entries: page.json.entries.map((e: any) => `${e.player}=${e.score}`) }
    }
    await until('both scores in the read model', async () => (await rest()).entries.length === 2)
    const expected = await rest()
    expect(expected).toMatchObject({ order: 'asc', entries: ['bob=20', 'ann=30'] })
    expect(expected.period).toMatch(/^\d{4}-\d{2}-\d{2}$/)
    await until('the watcher shows the board as REST does', () => {
      const s = shown(watcher, channel)
      return s.order === expected.order && s.period === expected.period && s.entries.join() === expected.entries.join()
    }, 15_000)
    expect(watcher.of(channel).some((f) => f.op === 'snapshot' && f.resync === true)).toBe(true)

    // Resuming from the empty state it saw before the change: a snapshot, not a replay.
    const back = await open()
    back.send({ op: 'subscribe', ref: 'b', channel, since: 0, epoch: before.epoch })
    await until('the resume answered', () => back.of(channel).length > 0)
    const answer = back.of(channel)[0]
    expect([answer.op, answer.resync, answer.data.order, answer.data.period]).toEqual(['snapshot', true, 'asc', expected.period])

    // Re-stating the rules of a scored board changes nothing: no new history, no re-sync.
    const snapshots = watcher.of(channel).filter((f) => f.op === 'snapshot').length
    const epoch = watcher.of(channel).at(-1).epoch
    expect((await d.call('PUT', '/admin/leaderboards/season-5', { order: 'asc' }, admin())).status).toBe(200)
    await d.call('POST', '/v1/events', { type: 'score.submitted', data: { board: 'season-5', player: 'cy', score: 10 } })
    await until('the next score live', () => shown(watcher, channel).entries.includes('cy=10'))
    await Bun.sleep(3_000) // the sweeper's round (2 s): a restart would have been published by now
    expect(watcher.of(channel).filter((f) => f.op === 'snapshot').length).toBe(snapshots)
    expect(watcher.of(channel).at(-1).epoch).toBe(epoch)
  }, 60_000)
})
