/**
 * (6) Authentication's cost: the same Fanfare node, clients signed in with a user JWT each
 * (`?token=`, HS256, verified with jose at the upgrade) against anonymous clients. Two figures,
 * each a ratio of the authenticated run to the anonymous one measured in the same run: the rate of
 * accepting connections, and fan-out deliveries per second to clients on one channel.
 */
import { startChild } from './lib/child'
import { BUN, pick, type BenchContext } from './lib/context'
import { deploy } from './lib/fanfare'
import type { Figure } from './lib/report'
import { fanfarePublisher, scenario } from './fanout'
import type { ClientsConfig } from './clients/ws-clients'

export async function connectRate(ctx: BenchContext, url: string, n: number, jwtSecret?: string): Promise<number> {
  const cfg: ClientsConfig = { kind: 'fanfare', url, n, channels: [], wave: 250, jwtSecret }
  const clients = startChild([BUN, 'bench/clients/ws-clients.ts'], cfg)
  try {
    const ready = await clients.next(180_000)
    const rate = n / (ready.openMs / 1000)
    ctx.log(`  ${jwtSecret ? 'with a JWT each' : 'anonymous'}: ${n} connections in ${ready.openMs.toFixed(0)} ms (${Math.round(rate)}/s)`)
    await clients.ask({ cmd: 'close' }).catch(() => {})
    return rate
  } finally {
    await clients.stop()
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

/**
 * Connect rates of both sides on one node, measured the same way: one unrecorded warm-up run of
 * each (the first run of a side compiles its code path: JSC's JIT threads alone took ~33 µs per
 * JWT connect in a node's first JWT run, ~14 in its second, under 1 from its fifth: bench/findings.md), then
 * `rounds` rounds that alternate which side goes first (anonymous, JWT; JWT, anonymous; ...), so
 * neither side always follows the other. Each side's figure is the median of its rounds.
 */
export async function alternatingConnectRates(ctx: BenchContext, url: string, n: number, jwtSecret: string, rounds: number) {
  await connectRate(ctx, url, n)
  await connectRate(ctx, url, n, jwtSecret)
  const anon: number[] = []
  const jwt: number[] = []
  for (let r = 0; r < rounds; r++) {
    if (r % 2) jwt.push(await connectRate(ctx, url, n, jwtSecret))
    anon.push(await connectRate(ctx, url, n))
    if (!(r % 2)) jwt.push(await connectRate(ctx, url, n, jwtSecret))
  }
  const ratios = anon.map((a, i) => jwt[i] / a)
  return { anon: median(anon), jwt: median(jwt), ratios }
}

export async function auth(ctx: BenchContext): Promise<Figure[]> {
  const n = pick(ctx, 50, 5000)
  const d = await deploy()
  try {
    const api = await d.startApi()
    const url = `ws://127.0.0.1:${api.port}/v1/ws`
    const secret = d.env.vars.FANFARE_JWT_SECRET
    const rounds = pick(ctx, 1, 5)
    ctx.log(`auth: connect rate, ${n} connections, a warm-up of each side then ${rounds} alternating rounds`)
    const connects = await alternatingConnectRates(ctx, url, n, secret, rounds)
    const spread = `JWT/anonymous by round ${connects.ratios.map((r) => r.toFixed(2)).join(' ')}`
    ctx.log(`  ${spread}; medians ${Math.round(connects.jwt)}/s vs ${Math.round(connects.anon)}/s`)
    ctx.notes.push(`auth connect rate: ${spread} (the figure is the ratio of the medians)`)
    const publisher = await fanfarePublisher(d)
    const sizes = { pacedPerSec: 4, pacedRounds: 8, burstRounds: Math.max(10, Math.round(pick(ctx, 500, 300_000) / n)) }
    ctx.log(`auth: fan-out to ${n} clients on one channel`)
    const anonFan = await scenario(ctx, 'fanfare', url, publisher, n, ['leaderboard:auth-a'], sizes)
    const signedFan = await scenario(ctx, 'fanfare', url, publisher, n, ['leaderboard:auth-s'], sizes, { jwtSecret: secret })
    ctx.log(`  anonymous ${Math.round(anonFan.rate)}/s, with a JWT each ${Math.round(signedFan.rate)}/s`)
    publisher.close()
    const base = { group: 'auth', baselineName: 'the same node, anonymous clients', target: { op: '>=' as const, ratio: 0.8 } }
    return [
      { ...base, name: `connections accepted per second, ${n} clients with a JWT each`, unit: '/s', value: connects.jwt, baseline: connects.anon },
      { ...base, name: `deliveries/s to ${n} clients with a JWT each, 1 channel`, unit: '/s', value: signedFan.rate, baseline: anonFan.rate },
    ]
  } finally {
    await d.close()
  }
}
