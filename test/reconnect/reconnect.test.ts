import { afterAll, describe, expect, test } from 'bun:test'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, spawnProc, until, waitReady, WsClient, type Proc } from '../e2e/harness'

const PLAYERS = 30
const EVENTS = 1500
const BATCH = 50
const CLIENTS = 6

/** What one client knows across its connections: its view of the board and where it is. */
type ClientState = {
  board: Record<string, number>
  version: number | undefined
  epoch: string | undefined
  recovered: number
  resyncs: number
  updates: number
}

/**
 * Applies the frames of one connection to a client's state, checking the promise: the first frame
 * continues exactly where the client was (`subscribed`, recovered) or replaces its state (snapshot),
 * and every update is exactly the next version. Throws on a gap or a repeat.
 */
function applySession(s: ClientState, frames: any[], resumed: boolean) {
  const own = frames.filter((f) => f.op === 'snapshot' || f.op === 'update' || f.op === 'subscribed')
  own.forEach((f, i) => {
    if (f.op === 'subscribed') {
      if (i !== 0 || !resumed) throw new Error(`unexpected subscribed frame at ${i}`)
      // Version 0 is the empty state of every epoch: resuming from it may name the channel's epoch.
      if (f.version !== s.version || (f.epoch !== s.epoch && s.version !== 0)) {
        throw new Error(`resumed at ${f.epoch}/${f.version}, client was at ${s.epoch}/${s.version}`)
      }
      s.epoch = f.epoch
      s.recovered++
    } else if (f.op === 'snapshot') {
      if (resumed && i === 0 && !f.resync) throw new Error('a refused resume must be marked resync')
      if (f.resync) s.resyncs++
      s.board = Object.fromEntries(f.data.entries.map((e: any) => [e.player, e.score]))
      s.version = f.version
      s.epoch = f.epoch
    } else {
      if (i === 0) throw new Error('an update before the first frame')
      if (f.version !== s.version! + 1) throw new Error(`update ${f.version} after ${s.version}: a gap or a repeat`)
      s.board[f.data.player] = f.data.score
      s.version = f.version
      s.epoch = f.epoch
      s.updates++
    }
  })
}

/**
 * Two API processes and two workers; clients subscribed to a board disconnect at random while
 * scores flow, and resume with since + epoch, often on the other node. Each client's versions never
 * skip or repeat, and its final view equals the read model.
 */
describe('reconnect and resume', () => {
  let env: TestEnv
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await env?.cleanup()
  })

  test('clients resume gap-free across nodes while updates flow', async () => {
    env = await createTestEnv({ FANFARE_PARTITIONS: '4', FANFARE_LEASE_TTL_MS: '3000' })
    const ports = [freePort(), freePort()]
    ports.forEach((port, i) => procs.push(spawnProc(`api-${i}`, 'api/src/main.ts', { ...env.vars, PORT: String(port), HOST: '127.0.0.1' })))
    for (const i of [1, 2]) procs.push(spawnProc(`worker-${i}`, 'stream-workers/src/main.ts', env.vars))
    for (const port of ports) await waitReady(`http://127.0.0.1:${port}`, procs)
    const base = (i: number) => `http://127.0.0.1:${ports[i % 2]}`
    const ws = (i: number) => `ws://127.0.0.1:${ports[i % 2]}/v1/ws`
    const board = `rc_${Math.random().toString(36).slice(2, 8)}`
    const channel = `leaderboard:${board}`
    const headers = (token: string) => ({ 'content-type': 'application/json', authorization: `Bearer ${token}` })
    const put = await fetch(`${base(0)}/admin/leaderboards/${board}`, {
      method: 'PUT',
      headers: headers(env.vars.FANFARE_ADMIN_TOKEN),
      body: JSON.stringify({ order: 'desc', operator: 'latest' }),
    })
    expect(put.status).toBe(200)

    let sending = true
    const sender = (async () => {
      for (let n = 0; n < EVENTS; n += BATCH) {
        const events = Array.from({ length: BATCH }, (_, k) => ({
          type: 'score.submitted',
          data: { board, player: `p${(n + k) % PLAYERS}`, score: n + k },
        }))
        const res = await fetch(`${base(n / BATCH)}/v1/events`, { method: 'POST', headers: headers(env.vars.FANFARE_INGEST_TOKEN), body: JSON.stringify({ events }) })
        if (res.status !== 202) throw new Error(`ingest answered ${res.status}: ${await res.text()}`)
        await Bun.sleep(100)
      }
      sending = false
    })()

    /** One client: connect to a random node, stay a random while, leave, resume; until sending ends. */
    async function runClient(id: number): Promise<ClientState> {
      const s: ClientState = { board: {}, version: undefined, epoch: undefined, recovered: 0, resyncs: 0, updates: 0 }
      let round = 0
      for (;;) {
        const last = !sending
        const c = await WsClient.open(ws(id + round++ + Math.floor(Math.random() * 2)))
        const resumed = s.version !== undefined
        // Client 0 once resumes with an epoch the channel never had: it must get a resync snapshot.
        const epoch = id === 0 && round === 3 ? 'stale' : s.epoch
        c.send(resumed ? { op: 'subscribe', channel, since: s.version, epoch } : { op: 'subscribe', channel })
        await until(`client ${id} first frame`, () => c.frames.some((f) => f.channel === channel || f.op === 'error'), 20_000)
        const refused = c.frames.find((f) => f.op === 'error')
        if (refused) throw new Error(`client ${id}: subscribe refused: ${JSON.stringify(refused)}`)
        if (last) {
          // Final connection: stay until the view is the final one (each player's last score).
          const final = sorted(Object.fromEntries(Array.from({ length: PLAYERS }, (_, p) => [`p${p}`, EVENTS - PLAYERS + p])))
          await until(
            `client ${id} converges`,
            () => {
              const probe: ClientState = structuredClone(s)
              applySession(probe, c.frames, resumed)
              return JSON.stringify(sorted(probe.board)) === JSON.stringify(final)
            },
            30_000,
            100,
          )
        } else {
          await Bun.sleep(50 + Math.random() * 400)
        }
        c.close()
        await until(`client ${id} closed`, () => c.closed, 5_000)
        applySession(s, c.frames, resumed)
        if (last) return s
      }
    }
    const sorted = (o: Record<string, number>) => Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : 1)))

    const [results] = await Promise.all([Promise.all(Array.from({ length: CLIENTS }, (_, i) => runClient(i))), sender])
    const model = await (await fetch(`${base(0)}/v1/leaderboards/${board}?limit=100`)).json()
    const want = sorted(Object.fromEntries(model.entries.map((e: any) => [e.player, e.score])))
    // Latest operator: each player's final score is the last one sent for it.
    for (let p = 0; p < PLAYERS; p++) expect(want[`p${p}`]).toBe(EVENTS - PLAYERS + p)
    for (const r of results) expect(sorted(r.board)).toEqual(want)
    const recovered = results.reduce((a, r) => a + r.recovered, 0)
    const updates = results.reduce((a, r) => a + r.updates, 0)
    // Resuming must actually have been exercised, not only snapshots.
    expect(recovered).toBeGreaterThan(CLIENTS)
    expect(updates).toBeGreaterThan(EVENTS / 2)
    expect(results[0].resyncs).toBeGreaterThanOrEqual(1)
  }, 90_000)
})
