import { afterAll, describe, expect, test } from 'bun:test'
import { jetstream } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { mintUserToken } from '../../api/src/auth/mint'
import { createTestEnv, TEST_NATS_URL, type TestEnv } from '../../core/testing/env'
import { freePort, spawnProc, until, waitReady, WsClient, type Proc } from '../e2e/harness'
import { stopCleanly } from '../cluster/support'

const TTL_MS = 3000

/**
 * The viewer sampler on two real API nodes with a worker: one node samples (every sample's id
 * names it); viewers on both nodes are counted once; when that node is SIGKILLed the other takes
 * over after the presence TTL; peak and unique viewers stay exact through it all (a viewer seen by
 * both samplers is still one unique viewer).
 */
describe('viewer sampler across two API nodes', () => {
  let env: TestEnv | undefined
  const procs: Proc[] = []
  const clients: WsClient[] = []
  afterAll(async () => {
    for (const c of clients) c.close()
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await env?.cleanup()
  })

  test('one node samples; hand-over after a SIGKILL; peak and unique exact', async () => {
    env = await createTestEnv({ HOST: '127.0.0.1', FANFARE_PRESENCE_TTL_MS: String(TTL_MS), FANFARE_PRESENCE_GRACE_MS: '500', FANFARE_PARTITIONS: '4', FANFARE_LEASE_TTL_MS: '2000' })
    const vars = env.vars
    const ports = [freePort(), freePort()]
    const apis = ports.map((port, i) => spawnProc(`api-${i}`, 'api/src/main.ts', { ...vars, PORT: String(port) }))
    const worker = spawnProc('worker', 'stream-workers/src/main.ts', vars)
    procs.push(...apis, worker)
    for (const port of ports) await waitReady(`http://127.0.0.1:${port}`, procs)
    const base = (i: number) => `http://127.0.0.1:${ports[i]}`
    const stream = async (i: number) => (await (await fetch(`${base(i)}/v1/streams/tv`)).json()) as any
    const res = await fetch(`${base(0)}/v1/events`, {
      method: 'POST',
      headers: { authorization: `Bearer ${vars.FANFARE_INGEST_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ events: [{ type: 'stream.started', data: { stream: 'tv', title: 'Finals' } }] }),
    })
    expect(res.status).toBe(202)

    const watch = async (i: number, sub?: string) => {
      const token = sub ? `?token=${await mintUserToken(vars.FANFARE_JWT_SECRET, { sub })}` : ''
      const c = await WsClient.open(`ws://127.0.0.1:${ports[i]}/v1/ws${token}`)
      clients.push(c)
      c.send({ op: 'subscribe', ref: 's', channel: 'stream:tv' })
      await until('snapshot', () => c.of('stream:tv').length > 0)
      return c
    }
    // Node 0: ann in two tabs, bob, an anonymous viewer. Node 1: cat, dan, ann again, an anonymous viewer.
    const on0 = [await watch(0, 'ann'), await watch(0, 'ann'), await watch(0, 'bob'), await watch(0)]
    const on1 = [await watch(1, 'cat'), await watch(1, 'dan'), await watch(1, 'ann'), await watch(1)]
    const until8 = await until('8 viewers sampled', async () => ((await stream(1)).viewers === 8 ? stream(0) : undefined), 20_000, 200)
    expect(until8).toMatchObject({ status: 'live', viewers: 8, peakViewers: 8, uniqueViewers: 4 })
    on0[3].close()
    on1[3].close()
    await until('6 viewers', async () => (await stream(0)).viewers === 6, 10_000, 200)

    // Which node samples: the samples' ids name it (`<host>-<pid>:<uuid>`).
    const samplers = async () => {
      const nc = await connect({ servers: TEST_NATS_URL })
      try {
        const js = jetstream(nc)
        const info = await (await js.jetstreamManager()).streams.info(vars.FANFARE_STREAM)
        const consumer = await js.consumers.get(vars.FANFARE_STREAM, { filter_subjects: `${vars.FANFARE_SUBJECT_PREFIX}.ev.*.stream.viewers.sampled` })
        const ids: string[] = []
        let pending = info.state.messages
        while (pending > 0) {
          const batch = await consumer.fetch({ max_messages: 500, expires: 2000 })
          let got = 0
          for await (const m of batch) {
            ids.push(m.json<{ id: string }>().id)
            got++
            if (m.info.pending === 0) pending = 0
          }
          if (got === 0) break
        }
        return ids.map((id) => id.slice(0, id.lastIndexOf(':')))
      } finally {
        await nc.close()
      }
    }
    const before = await samplers()
    expect(before.length).toBeGreaterThan(0)
    expect(new Set(before).size).toBe(1)
    const sampling = before[0]
    const killed = apis.findIndex((p) => sampling.endsWith(`-${p.proc.pid}`))
    expect(killed).toBeGreaterThanOrEqual(0)
    const survivor = 1 - killed

    // The sampling node dies: its viewers go with it, and the other node samples from then on.
    apis[killed].proc.kill('SIGKILL')
    const left = (survivor === 0 ? on0.slice(0, 3) : on1.slice(0, 3)).length
    await until(`viewers of the surviving node only (${left})`, async () => (await stream(survivor)).viewers === left, TTL_MS + 10_000, 200)
    // New viewers on the survivor: eve is new, ann and bob are not.
    await watch(survivor, 'eve')
    await watch(survivor, 'ann')
    await watch(survivor, 'bob')
    const final = await until('eve counted', async () => {
      const s = await stream(survivor)
      return s.viewers === left + 3 ? s : undefined
    }, 10_000, 200)
    expect(final).toMatchObject({ viewers: left + 3, peakViewers: 8, uniqueViewers: 5 })
    const after = await samplers()
    const took = after.slice(before.length)
    expect(new Set(after).size).toBe(2)
    expect(took.length).toBeGreaterThan(0)
    expect(took.every((s) => s.endsWith(`-${apis[survivor].proc.pid}`))).toBe(true)

    await stopCleanly(apis[survivor], worker)
  }, 90_000)
})
