import { afterAll, describe, expect, test } from 'bun:test'
import postgres from 'postgres'
import { mintUserToken } from '../../api/src/auth/mint'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, spawnProc, until, waitReady, type Proc } from '../e2e/harness'
import { stopCleanly } from '../cluster/support'

const USERS = 400
/** Requests in flight at once, spread over both API nodes. */
const IN_FLIGHT = 4

type Vote = { id: string; type: 'poll.voted'; data: { poll: string; option: number } }

/**
 * The one-vote rule on real processes: two API nodes, workers of which one is SIGKILLed mid-way
 * and another started later. Many users vote at once, most of them more than once, some for
 * options past the end or for a poll that never opens, and some after the polls closed. Each
 * user's votes for one poll go in one request, so their stream order is the order sent: the
 * oracle counts each voter's first valid vote, and every other acknowledged vote is ignored.
 */
describe('polls on a cluster: the first valid vote counts, exactly once, through a worker SIGKILL', () => {
  let env: TestEnv | undefined
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await env?.cleanup()
  })

  test('tallies equal the oracle of first valid votes; ignoredVotes the rest', async () => {
    env = await createTestEnv({ HOST: '127.0.0.1', FANFARE_PARTITIONS: '6', FANFARE_LEASE_TTL_MS: '2000', FANFARE_BATCH_SIZE: '40', LOG_LEVEL: 'warn' })
    const vars = env.vars
    const ports = [freePort(), freePort()]
    const apis = ports.map((port, i) => spawnProc(`api-${i}`, 'api/src/main.ts', { ...vars, PORT: String(port) }))
    const worker = (name: string) => spawnProc(name, 'stream-workers/src/main.ts', vars)
    const workers = [worker('worker-1'), worker('worker-2')]
    procs.push(...apis, ...workers)
    for (const port of ports) await waitReady(`http://127.0.0.1:${port}`, procs)
    const base = (i: number) => `http://127.0.0.1:${ports[i % 2]}`

    /** POSTs events, resending the same ids after a 503 (stored ones come back as duplicates); throws unless accepted. */
    let requests = 0
    async function send(events: unknown[], token: string) {
      const node = requests++
      for (let attempt = 0; ; attempt++) {
        const res = await fetch(`${base(node)}/v1/events`, {
          method: 'POST',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
          body: JSON.stringify({ events }),
        }).catch(() => undefined)
        if (res?.status === 202) return
        if (attempt >= 20 || (res && res.status !== 503)) throw new Error(`POST /v1/events: ${res?.status} ${await res?.text()}`)
        await Bun.sleep(250)
      }
    }
    const ingest = vars.FANFARE_INGEST_TOKEN
    const run = Math.random().toString(36).slice(2, 8)
    const polls = { pa: ['a', 'b'], pb: ['a', 'b', 'c', 'd'], pc: ['a', 'b', 'c', 'd', 'e'] } as Record<string, string[]>
    await send(
      Object.entries(polls).map(([poll, options]) => ({ id: `${run}-open-${poll}`, type: 'poll.opened', data: { stream: 'show', poll, question: `Poll ${poll}?`, options } })),
      ingest,
    )

    const oracle = new Map<string, { votes: number[]; ignored: number }>([...Object.entries(polls).map(([p, o]) => [p, { votes: o.map(() => 0), ignored: 0 }] as const), ['ghost', { votes: [], ignored: 0 }]])
    // Deterministic "random" choices.
    let seed = 12345
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n)
    const tokens = await Promise.all(Array.from({ length: USERS }, (_, u) => mintUserToken(vars.FANFARE_JWT_SECRET, { sub: `fan${u}` })))
    const jobs: { token: string; poll: string; votes: Vote[] }[] = []
    for (let u = 0; u < USERS; u++) {
      for (const poll of [...Object.keys(polls), 'ghost']) {
        if (poll === 'ghost' && u % 10 !== 0) continue
        // 1-3 votes, options 0-4 (the contract bound): some past the poll's options.
        const votes = Array.from({ length: 1 + rand(3) }, (_, k) => ({ id: `${run}-${u}-${poll}-${k}`, type: 'poll.voted' as const, data: { poll, option: rand(5) } }))
        jobs.push({ token: tokens[u], poll, votes })
      }
    }
    // Shuffle so that users and polls interleave.
    for (let i = jobs.length - 1; i > 0; i--) {
      const j = rand(i + 1)
      ;[jobs[i], jobs[j]] = [jobs[j], jobs[i]]
    }
    const account = (job: (typeof jobs)[number], closed: boolean) => {
      const o = oracle.get(job.poll)!
      const counted = new Set<number>()
      for (const [k, v] of job.votes.entries()) {
        if (!closed && counted.size === 0 && v.data.option < o.votes.length) {
          o.votes[v.data.option]++
          counted.add(k)
        } else o.ignored++
      }
    }

    let next = 0
    let restarted: Proc | undefined
    const lane = async () => {
      while (next < jobs.length) {
        const i = next++
        // Faults while votes flow: a worker dies mid-way, another starts later.
        if (i === Math.floor(jobs.length * 0.35)) workers[0].proc.kill('SIGKILL')
        if (i === Math.floor(jobs.length * 0.7)) procs.push((restarted = worker('worker-3')))
        const job = jobs[i]
        await send(job.votes, job.token)
        account(job, false)
      }
    }
    const t0 = Date.now()
    await Promise.all(Array.from({ length: IN_FLIGHT }, lane))
    // Closed (acknowledged), then late votes by users who never voted: ignored.
    await send(Object.keys(polls).map((poll) => ({ id: `${run}-close-${poll}`, type: 'poll.closed', data: { poll } })), ingest)
    const late = await mintUserToken(vars.FANFARE_JWT_SECRET, { sub: 'latecomer' })
    for (const poll of Object.keys(polls)) {
      const job = { token: late, poll, votes: [{ id: `${run}-late-${poll}`, type: 'poll.voted' as const, data: { poll, option: 0 } }] }
      await send(job.votes, job.token)
      account(job, true)
    }
    const sent = jobs.reduce((n, j) => n + j.votes.length, 0)

    const get = async (poll: string) => (await (await fetch(`${base(1)}/v1/polls/${poll}`)).json()) as any
    for (const [poll, expected] of Object.entries(polls).map(([p]) => [p, oracle.get(p)!] as const)) {
      const answer = await until(
        `${poll} to equal its oracle`,
        async () => {
          const a = await get(poll)
          const ok = a.ignoredVotes === expected.ignored && JSON.stringify(a.options.map((o: any) => o.votes)) === JSON.stringify(expected.votes)
          return ok ? a : undefined
        },
        60_000,
        250,
      ).catch(async (err) => {
        throw new Error(`${(err as Error).message}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(await get(poll))}`)
      })
      expect(answer).toMatchObject({ poll, stream: 'show', status: 'closed' })
    }
    console.log(`polls cluster: ${sent} votes from ${USERS} users (${jobs.length} requests) counted exactly ${Date.now() - t0} ms after the first, through a worker SIGKILL`)
    const sql = postgres(vars.DATABASE_URL, { max: 1, onnotice: () => {} })
    try {
      const [ghost] = await sql`select status, ignored_votes from polls where poll = 'ghost'`
      expect(ghost).toEqual({ status: 'pending', ignored_votes: oracle.get('ghost')!.ignored })
      const counted = [...oracle.values()].reduce((n, o) => n + o.votes.reduce((a, b) => a + b, 0), 0)
      expect(Number((await sql`select count(*)::int as n from poll_votes`)[0].n)).toBe(counted)
      expect(Number((await sql`select count(*)::int as n from dead_letters`)[0].n)).toBe(0)
    } finally {
      await sql.end()
    }
    expect((await fetch(`${base(0)}/v1/polls/ghost`)).status).toBe(404)
    await stopCleanly(...apis, workers[1], restarted!)
  }, 150_000)
})
