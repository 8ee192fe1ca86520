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

export async function auth(ctx: BenchContext): Promise<Figure[]> {
  const n = pick(ctx, 50, 5000)
  const d = await deploy()
  try {
    const api = await d.startApi()
    const url = `ws://127.0.0.1:${api.port}/v1/ws`
    const secret = d.env.vars.FANFARE_JWT_SECRET
    ctx.log(`auth: connect rate, ${n} connections`)
    // Anonymous first, then authenticated, then anonymous again: the baseline is the better of the
    // two anonymous runs, so a warm-up effect cannot flatter the ratio.
    const anon1 = await connectRate(ctx, url, n)
    const signed = await connectRate(ctx, url, n, secret)
    const anon2 = await connectRate(ctx, url, n)
    const publisher = await fanfarePublisher(d)
    const sizes = { pacedPerSec: 4, pacedRounds: 8, burstRounds: Math.max(10, Math.round(pick(ctx, 500, 300_000) / n)) }
    ctx.log(`auth: fan-out to ${n} clients on one channel`)
    const anonFan = await scenario(ctx, 'fanfare', url, publisher, n, ['leaderboard:auth-a'], sizes)
    const signedFan = await scenario(ctx, 'fanfare', url, publisher, n, ['leaderboard:auth-s'], sizes, { jwtSecret: secret })
    ctx.log(`  anonymous ${Math.round(anonFan.rate)}/s, with a JWT each ${Math.round(signedFan.rate)}/s`)
    publisher.close()
    const base = { group: 'auth', baselineName: 'the same node, anonymous clients', target: { op: '>=' as const, ratio: 0.8 } }
    return [
      { ...base, name: `connections accepted per second, ${n} clients with a JWT each`, unit: '/s', value: signed, baseline: Math.max(anon1, anon2) },
      { ...base, name: `deliveries/s to ${n} clients with a JWT each, 1 channel`, unit: '/s', value: signedFan.rate, baseline: anonFan.rate },
    ]
  } finally {
    await d.close()
  }
}
