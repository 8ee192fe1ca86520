import { describe, expect, test } from 'bun:test'
import { mintUserToken } from '../../api/src/auth/mint'
import { until, useApiNodes, type WsClient } from '../e2e/harness'

const USERS = 3000

/**
 * Field notes, complaint 4: "presence that collapses past a few thousand members per channel".
 * Two real API nodes, 3,000 users (a JWT each) joining one room half on each node, one of them
 * twice: both nodes' presence watchers and REST answers count every user and connection exactly,
 * and again after a third of them leave at once; each watcher gets at most one count per interval.
 */
describe('presence of a channel with thousands of members', () => {
  const nodes = useApiNodes(
    ['a', 'b'],
    {
      HOST: '127.0.0.1',
      FANFARE_PRESENCE_GRACE_MS: '0',
      FANFARE_PRESENCE_INTERVAL_MS: '200',
      // One test process holds every socket: the per-address limits are not what this is about.
      FANFARE_MAX_CONNECTIONS_PER_IP: '100000',
      FANFARE_IP_CONNECTS_PER_SECOND: '100000',
      FANFARE_IP_CONNECT_BURST: '100000',
    },
    { timeout: 60_000 },
  )
  const { ports } = nodes

  test(`${USERS} users over two nodes: every watcher and REST count exact, after joins and after 1,000 leave`, async () => {
    const channel = `chat:crowd_${Math.random().toString(36).slice(2, 8)}`
    const watched = `presence:${channel}`
    const watchers = [await nodes.open(0), await nodes.open(1)]
    for (const w of watchers) w.send({ op: 'subscribe', channel: watched })
    const latest = (w: WsClient) => w.frames.filter((f) => f.channel === watched && (f.op === 'snapshot' || f.op === 'update')).at(-1)?.data
    await until('watchers subscribed', () => watchers.every((w) => latest(w)))
    const watchedFrom = Date.now()
    // Past the member limit (100) a watcher gets counts, not joins: count updates and the
    // snapshots that re-shape its state (crossing the limit, a repair).
    const countFramesOf = (w: WsClient) => w.frames.filter((f) => f.channel === watched && ((f.op === 'update' && f.data.kind === 'count') || (f.op === 'snapshot' && f.version > 0))).length

    const members: WsClient[] = []
    const join = async (i: number, node: number) => {
      const token = await mintUserToken(nodes.env.vars.FANFARE_JWT_SECRET, { sub: `fan${i}` })
      const c = await nodes.open(node, `token=${token}`)
      c.send({ op: 'subscribe', channel })
      return c
    }
    for (let i = 0; i < USERS; i += 250) {
      members.push(...(await Promise.all(Array.from({ length: Math.min(250, USERS - i) }, (_, k) => join(i + k, (i + k) % 2)))))
    }
    await until('every member subscribed', () => members.every((c) => c.of(channel).length > 0), 60_000)
    // fan0 once more, on the other node: one more connection, no more users.
    const again = await join(0, 1)
    await until('again subscribed', () => again.of(channel).length > 0)

    const expectEverywhere = async (users: number, connections: number) => {
      const want = { users, connections }
      await until(
        `${users} users, ${connections} connections everywhere`,
        async () => {
          const rest = await Promise.all(ports.map(async (p) => (await (await fetch(`http://127.0.0.1:${p}/v1/presence/${channel}`)).json()) as any))
          const seen = [...watchers.map(latest), ...rest].map((x) => ({ users: x?.users, connections: x?.connections }))
          return seen.every((s) => Bun.deepEquals(s, want))
        },
        20_000,
        100,
      )
    }
    await expectEverywhere(USERS, USERS + 1)

    // A third leave at once (fan0's second connection among them: fan0 stays).
    const leaving = [again, ...members.slice(USERS - 1000)]
    for (const c of leaving) c.close()
    await until('closed', () => leaving.every((c) => c.closed), 20_000)
    await expectEverywhere(USERS - 1000, USERS - 1000)
    // Counts only past the member limit: no member list went to the watchers.
    for (const w of watchers) expect(latest(w).members).toBeUndefined()
    // And at most one count frame per interval (200 ms), however many joined and left: some 3,900
    // joins and 1,001 leaves past the limit reached each node's view; a frame each would be
    // thousands. (The first 100 joins were told one by one, with the members; +3: a re-shaping
    // snapshot or a repair may share an interval with a count.)
    const intervals = Math.ceil((Date.now() - watchedFrom) / 200)
    for (const w of watchers) expect(countFramesOf(w)).toBeLessThanOrEqual(intervals + 3)
    console.log(`presence watchers: ${watchers.map(countFramesOf).join(' and ')} count frames over ${intervals} intervals`)
  }, 180_000)
})
