import { afterAll, expect, test } from 'bun:test'
import type { NatsConnection } from '@nats-io/transport-node'
import { loadConfig } from '../../../core/config'
import { createLogger } from '../../../core/logger'
import { connectNats } from '../../../core/nats'
import { TEST_NATS_URL } from '../../../core/testing/env'
import { until } from '../../../core/testing/wait'
import type { UserPrincipal } from '../auth/principal'
import { startPresence, type Presence } from '.'

let nc: NatsConnection | undefined
let presence: Presence | undefined
afterAll(async () => {
  await presence?.stop()
  await nc?.close()
})

const user = (id: string): UserPrincipal => ({ kind: 'user', id, roles: [], channels: [], expiresAt: Date.now() + 3600_000 })

test('isPresent answers for one user what totals lists: cluster-wide presence of a channel', async () => {
  nc = await connectNats(TEST_NATS_URL, 'presence-is-present')
  const prefix = `t_presence_${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`
  const config = loadConfig({ FANFARE_SUBJECT_PREFIX: prefix, FANFARE_PRESENCE_GRACE_MS: '0' })
  presence = startPresence({ config, nc, logger: createLogger('silent'), publish: () => {} })
  const p = presence
  const channel = 'match:m1'
  for (let i = 0; i < 50; i++) p.track(channel, `c${i}`, user(`spectator${i}`))
  p.track(channel, 'seat', user('player'))
  await until('the users present', () => p.totals(channel).users.length === 51)
  for (const u of ['player', 'spectator0', 'spectator49']) expect(p.isPresent(channel, u)).toBe(true)
  expect(p.isPresent(channel, 'nobody')).toBe(false)
  expect(p.isPresent('match:m2', 'player')).toBe(false)
  expect(p.totals(channel).users.every((u) => p.isPresent(channel, u))).toBe(true)
  p.untrack(channel, 'seat', user('player'), 'revoked')
  await until('the player gone', () => !p.totals(channel).users.includes('player'))
  expect(p.isPresent(channel, 'player')).toBe(false)
  expect(p.isPresent(channel, 'spectator1')).toBe(true)
})
