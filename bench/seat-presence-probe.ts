/**
 * `flock /tmp/bench.lock node_modules/.bin/bun bench/seat-presence-probe.ts [--seats=8] [--rounds=2000]`:
 * what the designated node's seat sweep pays per match a round to ask presence about its seats,
 * on a `match:<id>` channel with 100 to 10,000 spectators present.
 *
 * A real presence (startPresence over the local NATS, a fresh subject prefix) holds the
 * spectators and the seated players (half of them present: an absent one is the worst case for a
 * list scan). Per match round it times:
 * - `totals`: what the sweep did before: the channel's user list copied once
 *   (`totals(channel).users`) and `includes` per seat, O(spectators x seats);
 * - `isPresent`: one `isPresent(channel, player)` per seat, O(seats).
 */
import { loadConfig } from '../core/config'
import { createLogger } from '../core/logger'
import { connectNats } from '../core/nats'
import { TEST_NATS_URL } from '../core/testing/env'
import { until } from '../core/testing/wait'
import { startPresence } from '../api/src/presence'
import type { UserPrincipal } from '../api/src/auth/principal'

const arg = (name: string, d: number) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? d)
const seats = arg('seats', 8)
const rounds = arg('rounds', 2000)
const user = (id: string): UserPrincipal => ({ kind: 'user', id, roles: [], channels: [], expiresAt: Date.now() + 3600_000 })

const nc = await connectNats(TEST_NATS_URL, 'seat-presence-probe')
const config = loadConfig({ FANFARE_SUBJECT_PREFIX: `probe_${Date.now().toString(36)}`, FANFARE_PRESENCE_GRACE_MS: '0' })
const presence = startPresence({ config, nc, logger: createLogger('silent'), publish: () => {} })
const players = Array.from({ length: seats }, (_, i) => `player${i}`)
let sink = 0
try {
  let present = 0
  for (const spectators of [100, 1000, 10_000]) {
    const channel = `match:m${spectators}`
    for (let i = 0; i < spectators; i++) presence.track(channel, `s${i}`, user(`spectator${i}`))
    for (const p of players.slice(0, seats / 2)) presence.track(channel, `seat-${p}`, user(p))
    present += spectators + seats / 2
    await until('presence to hold everyone', () => presence.totals(channel).users.length === spectators + seats / 2, 30_000)
    const time = (f: () => void) => {
      for (let r = 0; r < 50; r++) f() // warm-up
      const t0 = performance.now()
      for (let r = 0; r < rounds; r++) f()
      return ((performance.now() - t0) * 1000) / rounds
    }
    const before = time(() => {
      const users = presence.totals(channel).users
      for (const p of players) if (users.includes(p)) sink++
    })
    const after = time(() => {
      for (const p of players) if (presence.isPresent(channel, p)) sink++
    })
    console.log(`${spectators} spectators, ${seats} seats: totals+includes ${before.toFixed(1)} us/match, isPresent ${after.toFixed(2)} us/match (${(before / after).toFixed(0)}x)`)
  }
  console.log(`(${present} present in all; ${sink} hits)`)
} finally {
  await presence.stop()
  await nc.close()
}
