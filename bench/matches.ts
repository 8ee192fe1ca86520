/**
 * (9) Matches: a join storm. USERS users each try to join two of MATCHES matches of SEATS seats at
 * once (1,000 users for 100 matches of 10: every seat is raced for twice over). Events are stored
 * in JetStream (raw publish, as the API stores them) while one worker process runs; the figures are
 * decisions/s (join decisions on the users' `user:<sub>` channels, counted as their change runs
 * reach NATS) and the p99 from a join's publish to its decision's change run.
 * Baseline: the plain projection path for the same number of events: score.submitted events (one
 * new player each) from publish to their leaderboard change runs, in the same deployment.
 */
import { runsOfData } from '../core/live-batches'
import type { Subscription } from '@nats-io/transport-node'
import type { ChangeRun, UserChange } from '../core/channels'
import { dedupIdOf, partitionOf, subjects } from '../core/events'
import { until } from '../core/testing/wait'
import { pick, type BenchContext } from './lib/context'
import { deploy, publishAll, waitForWorkers, type Deployment } from './lib/fanfare'
import type { Figure } from './lib/report'
import { nowMs, summarize } from './lib/stats'

type Stored = { subject: string; id: string; body: string }

function stored(d: Deployment, key: string, e: { id: string; by: string; type: string; data: object }): Stored {
  const { FANFARE_SUBJECT_PREFIX: prefix, FANFARE_PARTITIONS: partitions } = d.env.config
  return { subject: subjects.event(prefix, partitionOf(key, partitions), e.type), id: dedupIdOf(e), body: JSON.stringify({ ...e, v: 1, at: new Date().toISOString() }) }
}

/**
 * Publishes `events` (each with the key its outcome is recognised by) and waits until an outcome
 * has arrived for every one, by `outcomes` (a core NATS subscription to change runs, which yields
 * keys). Returns outcomes/s from the first publish to the last outcome and the publish-to-outcome
 * latencies.
 */
async function storm(d: Deployment, events: { key: string; message: Stored }[], sub: Subscription, keysOf: (run: ChangeRun) => string[]) {
  const sentAt = new Map<string, number>()
  const latencies: number[] = []
  let last = 0
  const reading = (async () => {
    for await (const m of sub) {
      const now = nowMs()
      for (const key of runsOfData(m.data).flatMap(keysOf)) {
        const t = sentAt.get(key)
        if (t === undefined) continue
        sentAt.delete(key)
        latencies.push(now - t)
        last = now
      }
      if (latencies.length === events.length) break
    }
  })()
  const first = nowMs()
  await publishAll(
    d.js,
    (function* () {
      for (const e of events) {
        sentAt.set(e.key, nowMs())
        yield e.message
      }
    })(),
    500,
  )
  await until('every outcome', () => latencies.length === events.length, 120_000, 20)
  sub.unsubscribe()
  await reading
  return { rate: events.length / ((last - first) / 1000), latency: summarize(latencies) }
}

export async function matches(ctx: BenchContext): Promise<Figure[]> {
  const USERS = pick(ctx, 100, 1000)
  const MATCHES = pick(ctx, 10, 100)
  const SEATS = 10
  ctx.log(`matches: ${USERS} users x 2 joins for ${MATCHES} matches of ${SEATS}`)
  const d = await deploy()
  try {
    const prefix = d.env.config.FANFARE_SUBJECT_PREFIX
    d.startWorker()
    await waitForWorkers(d, 1)
    // The matches, applied before the storm.
    const names = Array.from({ length: MATCHES }, (_, m) => `bm${m}`)
    await publishAll(d.js, names.map((match) => stored(d, match, { id: `c-${match}`, by: 'ingest', type: 'match.created', data: { match, mode: 'bench', maxPlayers: SEATS } })))
    const created = d.nc.subscribe(subjects.changesOfKind(prefix, 'match'))
    let seen = 0
    // One run per message, or a live batch of several.
    for await (const m of created) if ((seen += runsOfData(m.data).reduce((n, r) => n + r.changes.length, 0)) >= MATCHES) break

    // Two different matches per user, spread so that every match is raced for.
    const joins = Array.from({ length: USERS }, (_, u) => [0, 1].map((k) => {
      const match = names[(u * 7 + k * (1 + (u % (MATCHES - 1)))) % MATCHES]
      return { key: `p${u}/${match}`, message: stored(d, match, { id: `j-${u}-${k}`, by: `u:p${u}`, type: 'match.join', data: { match } }) }
    })).flat()
    const decisions = await storm(d, joins, d.nc.subscribe(subjects.changesOfKind(prefix, 'user')), (run) =>
      (run.changes as UserChange[]).map((c) => `${run.channel.slice('user:'.length)}/${c.match}`),
    )
    // Decoded from the subject: user channel names are base64url in subjects, but the run carries the channel.
    ctx.log(`  joins: ${Math.round(decisions.rate)} decisions/s, p99 ${decisions.latency.p99.toFixed(1)} ms`)

    const scores = joins.map((_, i) => {
      const data = { board: `mb${i % 8}`, player: `s${i}`, score: i }
      return { key: `${data.board}/${data.player}`, message: stored(d, `${data.board}/${data.player}`, { id: `s-${i}`, by: 'ingest', type: 'score.submitted', data }) }
    })
    const plain = await storm(d, scores, d.nc.subscribe(subjects.changesOfKind(prefix, 'leaderboard')), (run) =>
      (run.changes as { player: string }[]).map((c) => `${run.channel.slice('leaderboard:'.length)}/${c.player}`),
    )
    ctx.log(`  plain scores: ${Math.round(plain.rate)} changes/s, p99 ${plain.latency.p99.toFixed(1)} ms`)
    const base = { group: 'matches', baselineName: 'plain projection path (score.submitted, same count)' }
    return [
      { ...base, name: `join decisions/s, ${USERS} users x 2 joins, ${MATCHES} matches of ${SEATS}, 1 worker`, unit: '/s', value: decisions.rate, baseline: plain.rate },
      { ...base, name: 'join-to-decision p99 (publish to user:<sub> change run)', unit: 'ms', value: decisions.latency.p99, baseline: plain.latency.p99 },
    ]
  } finally {
    await d.close()
  }
}
