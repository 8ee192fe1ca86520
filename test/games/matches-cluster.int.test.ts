import { afterEach, describe, expect, test } from 'bun:test'
import postgres from 'postgres'
import { mintUserToken } from '../../api/src/auth/mint'
import type { MatchChange, UserChange } from '../../core/channels'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { jetstream } from '@nats-io/jetstream'
import { connectNats } from '../../core/nats'
import { byChannel, readNotices, type World } from '../../stream-workers/src/testing/harness'
import { freePort, spawnProc, until, waitReady, WsClient, type Proc } from '../e2e/harness'

let env: TestEnv | undefined
const procs: Proc[] = []
const sockets: WsClient[] = []
afterEach(async () => {
  for (const s of sockets.splice(0)) s.close()
  await Promise.all(procs.splice(0).map((p) => p.stop('SIGKILL')))
  await env?.cleanup()
  env = undefined
})

/** Two real API nodes and `workers` worker processes over a fresh test env. */
async function cluster(overrides: Record<string, string>, workers: number) {
  env = await createTestEnv({ HOST: '127.0.0.1', FANFARE_LEASE_TTL_MS: '2000', LOG_LEVEL: 'warn', ...overrides })
  const vars = env.vars
  const ports = [freePort(), freePort()]
  procs.push(...ports.map((port, i) => spawnProc(`api-${i}`, 'api/src/main.ts', { ...vars, PORT: String(port) })))
  const worker = (name: string) => {
    const p = spawnProc(name, 'stream-workers/src/main.ts', vars)
    procs.push(p)
    return p
  }
  const started = Array.from({ length: workers }, (_, i) => worker(`worker-${i}`))
  for (const port of ports) await waitReady(`http://127.0.0.1:${port}`, procs)
  const base = (node: number) => `http://127.0.0.1:${ports[node % 2]}`
  const token = (sub: string) => mintUserToken(vars.FANFARE_JWT_SECRET, { sub })
  /** POSTs events to a node, resending the same ids after a 503; throws unless accepted. */
  const send = async (node: number, events: unknown[], as: string = vars.FANFARE_INGEST_TOKEN) => {
    for (let attempt = 0; ; attempt++) {
      const res = await fetch(`${base(node)}/v1/events`, {
        method: 'POST',
        headers: { authorization: `Bearer ${as}`, 'content-type': 'application/json' },
        body: JSON.stringify({ events }),
      }).catch(() => undefined)
      if (res?.status === 202) return (await res.json()) as { results: { duplicate?: boolean }[] }
      if (attempt >= 20 || (res && res.status !== 503)) throw new Error(`POST /v1/events: ${res?.status} ${await res?.text()}`)
      await Bun.sleep(250)
    }
  }
  const get = async (node: number, path: string) => (await (await fetch(`${base(node)}${path}`, { headers: { authorization: `Bearer ${await token('reader')}` } })).json()) as any
  /** A socket on a node as a user, subscribed to `channels` (snapshots received). */
  const client = async (node: number, sub: string, channels: string[]) => {
    const c = await WsClient.open(`ws://127.0.0.1:${ports[node % 2]}/v1/ws?token=${await token(sub)}`)
    sockets.push(c)
    for (const channel of channels) c.send({ op: 'subscribe', ref: channel, channel })
    await until(`${sub} subscribed`, () => channels.every((ch) => c.frames.some((f) => f.channel === ch && f.op === 'snapshot')))
    return c
  }
  return { vars, base, token, send, get, client, worker, workers: started }
}

/** What each user's channel says (u0..u<n-1>), read from the change stream in version order. */
async function userDecisions(users: number): Promise<Map<string, UserChange[]>> {
  const nc = await connectNats(env!.vars.NATS_URL, 'test-reader')
  try {
    const notices = byChannel(await readNotices({ nc, js: jetstream(nc), config: env!.config } as unknown as World))
    // A run published twice (a worker killed between publishing and deleting its outbox row) is read once, by version, as API nodes do.
    const once = (list: typeof notices extends Map<string, infer L> ? L : never) => list.filter((n, i) => i === 0 || n.version !== list[i - 1].version)
    return new Map(Array.from({ length: users }, (_, u) => [`u${u}`, once(notices.get(`user:u${u}`) ?? []).map((n) => n.data as UserChange)]))
  } finally {
    await nc.close()
  }
}

/** The changes a socket received on a channel, in version order, after its snapshot. */
const updates = <T>(c: WsClient, channel: string): T[] => c.frames.filter((f) => f.channel === channel && f.op === 'update').map((f) => f.data as T)

describe('matches on a cluster', () => {
  test('the seat race: users on two API nodes race for few seats through a worker SIGKILL; exactly maxPlayers are seated, everyone is told, results are scored once', async () => {
    const MATCHES = 6
    const SEATS = 5
    const USERS = 120
    const c = await cluster({ FANFARE_PARTITIONS: '4', FANFARE_BATCH_SIZE: '16' }, 2)
    await send0()
    async function send0() {
      expect((await fetch(`${c.base(0)}/admin/leaderboards/arena`, { method: 'PUT', headers: { authorization: `Bearer ${c.vars.FANFARE_ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ operator: 'sum' }) })).status).toBe(200)
      expect((await fetch(`${c.base(1)}/admin/modes/ranked`, { method: 'PUT', headers: { authorization: `Bearer ${c.vars.FANFARE_ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ board: 'arena' }) })).status).toBe(200)
    }
    const names = Array.from({ length: MATCHES }, (_, m) => `race${m}`)
    await c.send(0, names.map((match) => ({ id: `create-${match}`, type: 'match.created', data: { match, mode: 'ranked', maxPlayers: SEATS } })))
    // Some users watch their decisions live, on the other node than the one they join through.
    const watchers = new Map<string, WsClient>()
    for (let u = 0; u < 10; u++) watchers.set(`u${u}`, await c.client(u + 1, `u${u}`, [`user:u${u}`]))

    // Every user tries two matches (some the same one twice), each join through an alternating node.
    let seed = 7
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), Math.floor((seed / 2 ** 31) * n))
    const tokens = await Promise.all(Array.from({ length: USERS }, (_, u) => c.token(`u${u}`)))
    const jobs: { user: number; match: string }[] = []
    for (let u = 0; u < USERS; u++) for (let k = 0; k < 2; k++) jobs.push({ user: u, match: names[u % 7 === 0 ? 0 : (u + 3 * k) % MATCHES] })
    for (let i = jobs.length - 1; i > 0; i--) {
      const j = rand(i + 1)
      ;[jobs[i], jobs[j]] = [jobs[j], jobs[i]]
    }
    let next = 0
    const lane = async () => {
      while (next < jobs.length) {
        const i = next++
        if (i === Math.floor(jobs.length * 0.4)) c.workers[0].proc.kill('SIGKILL')
        if (i === Math.floor(jobs.length * 0.7)) c.worker('worker-late')
        await c.send(i, [{ type: 'match.join', data: { match: jobs[i].match } }], tokens[jobs[i].user])
      }
    }
    await Promise.all(Array.from({ length: 12 }, lane))

    const seated = new Map<string, string[]>()
    for (const match of names) {
      const m = await until(`${match} to be full`, async () => {
        const a = await c.get(1, `/v1/matches/${match}`)
        return a.status === 'full' ? a : undefined
      }, 60_000, 200).catch(async (err) => {
        throw new Error(`${(err as Error).message}: ${JSON.stringify(await c.get(1, `/v1/matches/${match}`))}; ${procs.map((p) => p.output().slice(-1500)).join('\n')}`)
      })
      expect(m.players).toHaveLength(SEATS)
      seated.set(match, m.players.map((p: any) => p.player))
    }
    // Every join was decided once, on the user's channel: accepted exactly for the seated.
    const sql = postgres(c.vars.DATABASE_URL, { max: 1, onnotice: () => {} })
    try {
      const decisions = await until(
        'every join decided',
        async () => {
          const out = await userDecisions(USERS)
          const n = [...out.values()].reduce((n, l) => n + l.length, 0)
          if (n > jobs.length) throw new Error(`${n} decisions for ${jobs.length} joins`)
          return n === jobs.length ? out : undefined
        },
        30_000,
        250,
      )
      let accepted = 0
      for (const [user, list] of decisions) {
        for (const d of list) {
          if (d.accepted) {
            accepted++
            expect(seated.get(d.match)).toContain(user)
          } else expect(['full', 'already_joined']).toContain(d.reason)
        }
      }
      expect(accepted).toBe(MATCHES * SEATS)
      // The watchers were told live, with the same decisions.
      for (const [user, ws] of watchers) {
        await until(`${user}'s decisions live`, () => updates<UserChange>(ws, `user:${user}`).length === decisions.get(user)!.length, 10_000)
        expect(updates<UserChange>(ws, `user:${user}`)).toEqual(decisions.get(user)!)
      }

      // Results: every match starts and finishes; finishes are sent twice (the same ids) and a worker dies meanwhile.
      const oracle = new Map<string, number>()
      const finishes = names.map((match, m) => {
        const results = seated.get(match)!.map((player, i) => ({ player, score: m * 10 + i + 1 }))
        for (const r of results) oracle.set(r.player, (oracle.get(r.player) ?? 0) + r.score)
        return [{ id: `start-${match}`, type: 'match.start', data: { match } }, { id: `finish-${match}`, type: 'match.finish', data: { match, results } }]
      })
      for (const [i, f] of finishes.entries()) await c.send(i, f)
      c.workers[1].proc.kill('SIGKILL')
      c.worker('worker-after')
      for (const [i, f] of finishes.entries()) expect((await c.send(i + 1, f)).results.every((r) => r.duplicate)).toBe(true)
      const board = await until('scores on arena', async () => {
        const rows = await sql<{ player: string; score: number }[]>`select player, score from leaderboard_entries where board = 'arena'`
        const got = new Map(rows.map((r) => [r.player, Number(r.score)]))
        return got.size === oracle.size && [...oracle].every(([p, s]) => got.get(p) === s) ? got : undefined
      }, 60_000, 250)
      expect(board).toEqual(oracle)
      // Nothing more comes later (a double apply would add to a sum).
      await Bun.sleep(3000)
      const again = await sql<{ player: string; score: number }[]>`select player, score from leaderboard_entries where board = 'arena'`
      expect(new Map(again.map((r) => [r.player, Number(r.score)]))).toEqual(oracle)
      expect((await c.get(0, `/v1/matches/${names[0]}`)).results).toHaveLength(SEATS)
    } finally {
      await sql.end()
    }
  }, 180_000)

  test('grace and reconnect: a player whose connections all close is shown disconnected, keeps the seat on a reconnect to another node, and leaves after the grace', async () => {
    const c = await cluster({ FANFARE_PARTITIONS: '2', FANFARE_MATCH_GRACE_MS: '3000', FANFARE_PRESENCE_GRACE_MS: '200', FANFARE_PRESENCE_TTL_MS: '3000' }, 1)
    // The seat watchers act once their presence has heard every peer.
    await Bun.sleep(3500)
    await c.send(0, [{ type: 'match.created', data: { match: 'g1', mode: 'duel', maxPlayers: 2 } }])
    await c.send(0, [{ type: 'match.join', data: { match: 'g1' } }], await c.token('gina'))
    await c.send(1, [{ type: 'match.join', data: { match: 'g1' } }], await c.token('hal'))
    await until('g1 full', async () => (await c.get(0, '/v1/matches/g1')).status === 'full', 20_000)
    const spectator = await c.client(1, 'spec', ['match:g1'])
    const gina = await c.client(0, 'gina', ['match:g1'])
    await c.client(1, 'hal', ['match:g1'])
    const all = () => updates<MatchChange>(spectator, 'match:g1').map((u) => ('player' in u ? `${u.kind}:${u.player}${u.kind === 'connection' ? `:${u.connected}` : ''}${u.kind === 'left' ? `:${u.reason}` : ''}` : u.kind))
    // Seats start not yet connected (the join grace): each player's first connect is shown.
    await until('gina and hal shown connected', () => all().includes('connection:gina:true') && all().includes('connection:hal:true'), 15_000)
    const firsts = all().length
    const kinds = () => all().slice(firsts)

    // Presence counts match channels, cluster-wide.
    const presence = await until('presence of match:g1', async () => { const p = await c.get(0, '/v1/presence/match:g1'); return p.users === 3 ? p : undefined }, 10_000).catch(async (e) => { throw new Error(`${e.message}: ${JSON.stringify(await c.get(0, '/v1/presence/match:g1'))} ${procs[0].output().slice(-2500)}`) })
    expect(presence.members.map((m: any) => m.user)).toEqual(['gina', 'hal', 'spec'])

    // Her only connection closes: disconnected, with the grace's end.
    gina.close()
    await until('gina shown disconnected', () => kinds().includes('connection:gina:false'), 15_000)
    const player = (await c.get(1, '/v1/matches/g1')).players.find((p: any) => p.player === 'gina')
    expect(player).toMatchObject({ connected: false, graceUntil: expect.any(String) })
    // She comes back on the other node within the grace: the seat is hers.
    const back = await c.client(1, 'gina', ['match:g1'])
    await until('gina shown connected', () => kinds().includes('connection:gina:true'), 15_000)
    await Bun.sleep(3500)
    expect((await c.get(0, '/v1/matches/g1')).players.map((p: any) => [p.player, p.connected])).toEqual([
      ['gina', true],
      ['hal', true],
    ])
    // Gone again, for good: she leaves once the grace has run out, and the match opens again.
    back.close()
    await until('gina left', () => kinds().includes('left:gina:disconnected'), 20_000)
    const m = await c.get(0, '/v1/matches/g1')
    expect(m).toMatchObject({ status: 'open', players: [{ player: 'hal' }] })
    expect(kinds()).toEqual(['connection:gina:false', 'connection:gina:true', 'connection:gina:false', 'left:gina:disconnected'])
    // Her join now is a new seat.
    await c.send(1, [{ type: 'match.join', data: { match: 'g1' } }], await c.token('gina'))
    await until('gina seated again', async () => (await c.get(0, '/v1/matches/g1')).status === 'full', 15_000)
  }, 120_000)
})
