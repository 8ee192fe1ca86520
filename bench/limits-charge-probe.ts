/**
 * Probe (not part of `bench/run.ts`): what one charge of a rate budget, and one socket opened and
 * closed, cost on an API node's hot path, in process (no server, no NATS). Run it on two
 * checkouts to compare (it uses only what both have; `share` is ignored where it does not exist).
 * With `--share`, the limits keep what they charge for the other nodes (see LimitsCluster) and what
 * is kept is read every `--drain-every` charges, as the cluster's flush does every 200 ms.
 *
 *   flock /tmp/bench.lock node_modules/.bin/bun bench/limits-charge-probe.ts [--share] [--principals=1000]
 *     [--charges=5000000] [--drain-every=20000] [--runs=5]
 */
import { createConnectionLimits } from '../api/src/limits/connections'
import { createRateLimits } from '../api/src/limits/rates'
import type { Principal } from '../api/src/auth/principal'

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1]
const SHARE = process.argv.includes('--share')
const PRINCIPALS = Number(arg('principals') ?? 1000)
const CHARGES = Number(arg('charges') ?? 5_000_000)
const DRAIN_EVERY = Number(arg('drain-every') ?? 20_000)
const RUNS = Number(arg('runs') ?? 5)

// Budgets nobody reaches: every charge passes (a refusal is not the hot path).
const big = 1_000_000_000
const config = {
  FANFARE_WS_PUBLISHES_PER_SECOND: big,
  FANFARE_WS_PUBLISH_BURST: big,
  FANFARE_WS_SUBSCRIBES_PER_SECOND: big,
  FANFARE_USER_OPS_PER_SECOND: big,
  FANFARE_USER_OPS_BURST: big,
  FANFARE_KEY_OPS_PER_SECOND: big,
  FANFARE_KEY_OPS_BURST: big,
  FANFARE_ANONYMOUS_OPS_PER_SECOND: big,
  FANFARE_ANONYMOUS_OPS_BURST: big,
  FANFARE_WS_ABUSE_FACTOR: 3,
  FANFARE_WS_ABUSE_WINDOW_MS: 5000,
  FANFARE_MAX_CONNECTIONS_PER_IP: big,
  FANFARE_MAX_CONNECTIONS_PER_USER: big,
  FANFARE_IP_CONNECTS_PER_SECOND: big,
  FANFARE_IP_CONNECT_BURST: big,
}
const users: Principal[] = Array.from({ length: PRINCIPALS }, (_, i) => ({ kind: 'user', id: `player-${i}`, roles: [], channels: [], expiresAt: Date.now() + 3_600_000 }))
const drainOf = (x: unknown): (() => unknown) | undefined => (x as { shared?: { drain?: () => unknown; changed?: () => unknown } }).shared?.drain ?? (x as { shared?: { changed?: () => unknown } }).shared?.changed

function measure(name: string, n: number, body: (i: number) => void, drain?: () => unknown) {
  const ns: number[] = []
  for (let run = 0; run < RUNS; run++) {
    // CPU time, not wall time: the machine is shared, and a run preempted meanwhile would count
    // the other processes' time as this one's.
    const t = process.cpuUsage()
    for (let i = 0; i < n; i++) {
      body(i)
      if (drain && i % DRAIN_EVERY === DRAIN_EVERY - 1) drain()
    }
    const used = process.cpuUsage(t)
    ns.push(((used.user + used.system) * 1000) / n)
  }
  ns.sort((x, y) => x - y)
  console.log(`${name.padEnd(44)} min ${ns[0].toFixed(1)} median ${ns[Math.floor(RUNS / 2)].toFixed(1)} ns CPU (${ns.map((v) => v.toFixed(0)).join(' ')})`)
}

console.log(`share=${SHARE} principals=${PRINCIPALS} charges=${CHARGES} drain every ${DRAIN_EVERY}; CPU ns per op, ${RUNS} runs`)
const rates = createRateLimits({ config, maxSubscriptions: 100, share: SHARE } as Parameters<typeof createRateLimits>[0])
const drain = SHARE ? drainOf(rates) : undefined
measure('REST charge (user budget)', CHARGES, (i) => void rates.charge(users[i % PRINCIPALS], 1), drain)
const sockets = users.map(() => rates.connection('203.0.113.1'))
measure('WS publish (socket bucket + user budget)', CHARGES, (i) => void sockets[i % PRINCIPALS].publish(users[i % PRINCIPALS]), drain)
// What a publish costs the socket's handler: the charge, then the warning asked after it passed.
measure('WS publish + warning', CHARGES, (i) => {
  const s = sockets[i % PRINCIPALS]
  if (!s.publish(users[i % PRINCIPALS])) s.warning?.(users[i % PRINCIPALS])
}, drain)
// What a REST request costs the auth plugin: the charge and the standing for its RateLimit fields
// (one call where the limits have chargeStanding, else charge then standing).
type Both = { chargeStanding?: (p: Principal, cost: number) => unknown; standing?: (p: Principal) => unknown }
const both = rates as unknown as Both
measure('REST charge + standing', CHARGES, (i) => {
  const u = users[i % PRINCIPALS]
  if (both.chargeStanding) both.chargeStanding(u, 1)
  else if (!rates.charge(u, 1)) both.standing?.(u)
}, drain)
rates.stop()

const conns = createConnectionLimits({ config, share: SHARE } as Parameters<typeof createConnectionLimits>[0])
const changed = SHARE ? drainOf(conns) : undefined
measure('socket open + release (address and user)', CHARGES / 5, (i) => {
  const r = conns.open(`203.0.113.${i % 200}`, users[i % PRINCIPALS])
  if ('slot' in r) r.slot.release()
}, changed)
conns.stop()

if (SHARE) {
  // One interval's message both ways: the sender drains and encodes what it charged `PRINCIPALS`
  // principals, a receiver decodes it and debits each budget.
  const sender = createRateLimits({ config, maxSubscriptions: 100, share: true } as Parameters<typeof createRateLimits>[0])
  const receiver = createRateLimits({ config, maxSubscriptions: 100, share: true } as Parameters<typeof createRateLimits>[0])
  let text = ''
  measure(`interval out: ${PRINCIPALS} charged, drain + encode`, 200, () => {
    for (const u of users) sender.charge(u, 1)
    text = JSON.stringify({ type: 'delta', node: 'n', inc: 'i', seq: 1, spent: sender.shared.drain() })
  })
  measure(`interval in: decode + debit ${PRINCIPALS}`, 200, () => {
    for (const [id, n] of (JSON.parse(text) as { spent: [string, number][] }).spent) receiver.shared.debit(id, n)
  })
  console.log(`message: ${text.length} bytes for ${PRINCIPALS} principals`)
  sender.stop()
  receiver.stop()
}
