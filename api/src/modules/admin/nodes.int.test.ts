import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { connectPostgres, type Database } from '../../../../core/db/client'
import { createLogger } from '../../../../core/logger'
import { until } from '../../../../test/e2e/harness'
import { startApi, type RunningApi } from '../../server'
import { startTestNode, type TestNode } from '../../test-support'
import { busiestOf } from './nodes'

describe('GET /admin/nodes', () => {
  let a: TestNode
  let b: RunningApi
  let bDb: Database
  const sockets: WebSocket[] = []

  const view = async (token = a.env.vars.FANFARE_ADMIN_TOKEN) => {
    const r = await fetch(`${a.base}/admin/nodes`, { headers: { authorization: `Bearer ${token}` } })
    return { status: r.status, json: (await r.json()) as any }
  }
  /** A client on node `port` watching `channels`; resolves once every subscription is confirmed. */
  const watch = async (port: number, channels: string[]) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/ws`)
    sockets.push(ws)
    const pending = new Set(channels)
    await new Promise<void>((resolve, reject) => {
      ws.onerror = () => reject(new Error('socket failed'))
      ws.onmessage = (e) => {
        const f = JSON.parse(String(e.data))
        if (f.op === 'snapshot') pending.delete(f.channel)
        if (pending.size === 0) resolve()
      }
      ws.onopen = () => channels.forEach((channel) => ws.send(JSON.stringify({ op: 'subscribe', channel })))
    })
    return ws
  }

  beforeAll(async () => {
    a = await startTestNode()
    // A second node of the same deployment.
    bDb = await connectPostgres(a.env.vars.DATABASE_URL, { max: 2 })
    b = await startApi({ config: { ...a.env.config, PORT: 0 }, db: bDb.db, nc: a.nc, logger: createLogger('silent') })
  })
  afterAll(async () => {
    sockets.forEach((s) => s.close())
    await b.stop()
    await bDb.close()
    await a.close()
  })

  test('admin:read only', async () => {
    expect((await fetch(`${a.base}/admin/nodes`)).status).toBe(401)
    expect((await view(a.env.vars.FANFARE_INGEST_TOKEN)).status).toBe(403)
  })

  test('every node with its connections, subscriptions and busiest channels; busiest summed over nodes', async () => {
    const before = await view()
    expect(before.status).toBe(200)
    // Both nodes answer, each from its own state (they share one NATS connection in this test, so
    // they report one presence id: told apart by their counts).
    expect(before.json.nodes).toHaveLength(2)
    expect(before.json.nodes.map((n: any) => n.connections)).toEqual([0, 0])
    expect(before.json).toMatchObject({ busiest: [], workers: [], partitions: a.env.config.FANFARE_PARTITIONS })

    await watch(a.api.port, ['leaderboard:hot', 'leaderboard:cold'])
    await watch(a.api.port, ['leaderboard:hot'])
    await watch(b.port, ['leaderboard:hot', 'chat:lobby'])
    const after = await until('counts show the clients', async () => {
      const v = await view()
      return v.json.nodes.map((n: any) => n.connections).sort().join() === '1,2' ? v.json : undefined
    }, 10_000, 50)
    const [one, two] = [...after.nodes].sort((x: any, y: any) => x.connections - y.connections)
    expect(one).toMatchObject({ connections: 1, subscriptions: 2, channels: 2 })
    expect(two).toMatchObject({ connections: 2, subscriptions: 3, channels: 2, busiest: [{ channel: 'leaderboard:hot', subscribers: 2 }, { channel: 'leaderboard:cold', subscribers: 1 }] })
    expect(Date.parse(one.startedAt)).toBeGreaterThan(0)
    expect(after.busiest).toEqual([
      { channel: 'leaderboard:hot', subscribers: 3 },
      { channel: 'chat:lobby', subscribers: 1 },
      { channel: 'leaderboard:cold', subscribers: 1 },
    ])
  })

  test('busiestOf sums per channel and keeps the top', () => {
    const loads = [
      { channel: 'a', subscribers: 1 },
      { channel: 'b', subscribers: 2 },
      { channel: 'a', subscribers: 2 },
      { channel: 'c', subscribers: 1 },
    ]
    expect(busiestOf(loads, 2)).toEqual([
      { channel: 'a', subscribers: 3 },
      { channel: 'b', subscribers: 2 },
    ])
  })
})
