import { expect, test } from 'bun:test'
import { loadConfig } from '../../../core/config'
import type { Principal } from '../auth/principal'
import { ANONYMOUS } from '../auth/principal'
import { createConnectionLimits } from './connections'

const user = (id: string): Principal => ({ kind: 'user', id, roles: [], channels: [], expiresAt: Date.now() + 3600_000 })
const config = loadConfig({ FANFARE_MAX_CONNECTIONS_PER_IP: '3', FANFARE_MAX_CONNECTIONS_PER_USER: '2', FANFARE_IP_CONNECTS_PER_SECOND: '2', FANFARE_IP_CONNECT_BURST: '4' })

test('connects per second per address: a burst, then the rate, with the wait; every attempt counts', () => {
  let t = 0
  const limits = createConnectionLimits({ config, now: () => t })
  for (let i = 0; i < 4; i++) expect(limits.admitAddress('1.1.1.1')).toBeUndefined()
  expect(limits.admitAddress('1.1.1.1')).toMatchObject({ code: 'rate_limited', retryAfterMs: 500 })
  expect(limits.admitAddress('2.2.2.2')).toBeUndefined() // another address has its own
  t += 500
  expect(limits.admitAddress('1.1.1.1')).toBeUndefined()
  limits.stop()
})

test('open sockets per address and per user; a released slot frees its place', () => {
  const limits = createConnectionLimits({ config })
  const a = limits.open('1.1.1.1', user('ann'))
  const b = limits.open('1.1.1.1', user('ann'))
  if (!('slot' in a) || !('slot' in b)) throw new Error('refused')
  expect(limits.admitPrincipal(user('ann'))).toMatchObject({ code: 'too_many_connections' })
  expect(limits.open('9.9.9.9', user('ann'))).toMatchObject({ refusal: { code: 'too_many_connections' } })
  const c = limits.open('1.1.1.1', ANONYMOUS)
  if (!('slot' in c)) throw new Error('refused')
  expect(limits.count('ip:1.1.1.1')).toBe(3)
  expect(limits.admitAddress('1.1.1.1')).toMatchObject({ code: 'too_many_connections' })
  expect(limits.open('1.1.1.1', ANONYMOUS)).toMatchObject({ refusal: { code: 'too_many_connections' } })
  a.slot.release()
  a.slot.release() // twice is once
  expect(limits.count('ip:1.1.1.1')).toBe(2)
  expect(limits.count('u:ann')).toBe(1)
  expect(limits.admitPrincipal(user('ann'))).toBeUndefined()
  // An anonymous socket that authenticates counts against its user from then on.
  expect(c.slot.identify(user('ann'))).toBeUndefined()
  expect(limits.count('u:ann')).toBe(2)
  const d = limits.open('2.2.2.2', ANONYMOUS)
  if (!('slot' in d)) throw new Error('refused')
  expect(d.slot.identify(user('ann'))).toMatchObject({ code: 'too_many_connections' })
  expect(limits.count('u:ann')).toBe(2)
  for (const s of [b, c, d]) s.slot.release()
  expect([limits.count('ip:1.1.1.1'), limits.count('ip:2.2.2.2'), limits.count('u:ann')]).toEqual([0, 0, 0])
  limits.stop()
})

test('a hold-off refuses the user (or, for anonymous sockets, the address) until it ends', () => {
  let t = 0
  const limits = createConnectionLimits({ config, now: () => t })
  limits.holdOff('1.1.1.1', user('ann'), 5000)
  limits.holdOff('3.3.3.3', ANONYMOUS, 5000)
  expect(limits.admitPrincipal(user('ann'))).toMatchObject({ code: 'rate_limited', retryAfterMs: 5000 })
  expect(limits.admitAddress('1.1.1.1')).toBeUndefined() // others behind the same address are not punished
  expect(limits.admitAddress('3.3.3.3')).toMatchObject({ code: 'rate_limited', retryAfterMs: 5000 })
  t += 4000
  expect(limits.admitPrincipal(user('ann'))?.retryAfterMs).toBe(1000)
  t += 1000
  expect(limits.admitPrincipal(user('ann'))).toBeUndefined()
  expect(limits.admitAddress('3.3.3.3')).toBeUndefined()
  limits.stop()
})

test("a hold-off refuses a key's sign-in on an anonymous socket, as a user's: the hold-off is not only the upgrade's", () => {
  let t = 0
  const limits = createConnectionLimits({ config, now: () => t })
  const key: Principal = { kind: 'key', id: 'key_1', name: 'game server', scopes: ['publish:*'] }
  limits.holdOff('1.1.1.1', key, 5000)
  limits.holdOff('1.1.1.1', user('ann'), 5000)
  const viewer = limits.open('1.1.1.1', ANONYMOUS)
  if (!('slot' in viewer)) throw new Error('refused')
  expect(viewer.slot.identify(key)).toMatchObject({ code: 'rate_limited', retryAfterMs: 5000 })
  expect(viewer.slot.identify(user('ann'))).toMatchObject({ code: 'rate_limited', retryAfterMs: 5000 })
  // A socket that already is the key refreshes it freely (no new sign-in); once the hold-off ends, signing in works.
  const server = limits.open('2.2.2.2', key)
  if (!('slot' in server)) throw new Error('refused')
  expect(server.slot.identify(key)).toBeUndefined()
  t += 5000
  expect(viewer.slot.identify(key)).toBeUndefined()
  limits.stop()
})

test('prune forgets connect buckets that refilled', () => {
  let t = 0
  const limits = createConnectionLimits({ config, now: () => t })
  limits.admitAddress('1.1.1.1')
  limits.admitAddress('1.1.1.1')
  limits.prune()
  expect(limits.admitAddress('1.1.1.1')).toBeUndefined()
  expect(limits.admitAddress('1.1.1.1')).toBeUndefined()
  expect(limits.admitAddress('1.1.1.1')?.code).toBe('rate_limited') // still the same bucket: not full, kept
  t += 10_000
  limits.prune()
  for (let i = 0; i < 4; i++) expect(limits.admitAddress('1.1.1.1')).toBeUndefined()
  limits.stop()
})

test('shared: sockets other nodes report count against the limits; changed keys are read with their count now', () => {
  const limits = createConnectionLimits({ config, share: true })
  limits.shared.addRemote('u:ann', 1)
  const a = limits.open('1.1.1.1', user('ann'))
  if (!('slot' in a)) throw new Error('refused')
  // 1 here + 1 elsewhere = the limit (2).
  expect(limits.admitPrincipal(user('ann'))).toMatchObject({ code: 'too_many_connections' })
  expect(limits.shared.changed().sort()).toEqual([['ip:1.1.1.1', 1], ['u:ann', 1]])
  limits.shared.addRemote('ip:1.1.1.1', 2)
  expect(limits.admitAddress('1.1.1.1')).toMatchObject({ code: 'too_many_connections' })
  limits.shared.addRemote('u:ann', -1)
  limits.shared.addRemote('ip:1.1.1.1', -2)
  expect(limits.admitPrincipal(user('ann'))).toBeUndefined()
  a.slot.release()
  expect(limits.shared.changed().sort()).toEqual([['ip:1.1.1.1', 0], ['u:ann', 0]])
  expect(limits.shared.state()).toEqual([])
  limits.stop()
})

test('shared hold-offs: those set here are read once with the time they have left; one heard holds the key off here, and the later end wins', () => {
  let t = 0
  const told: number[] = []
  const limits = createConnectionLimits({ config, now: () => t, share: true, onHoldOff: () => told.push(t) })
  limits.holdOff('1.1.1.1', user('ann'), 5000)
  limits.holdOff('3.3.3.3', ANONYMOUS, 4000)
  expect(told).toEqual([0, 0]) // the cluster is told at once, to send them before the close
  t += 1000
  expect(limits.shared.heldOff().sort()).toEqual([['ip:3.3.3.3', 3000], ['u:ann', 4000]])
  expect(limits.shared.heldOff()).toEqual([]) // read once
  // Another node held bob off: refused here for as long as it has left, never more.
  limits.shared.holdOff('u:bob', 2000)
  expect(limits.admitPrincipal(user('bob'))).toMatchObject({ code: 'rate_limited', retryAfterMs: 2000 })
  // A shorter one heard later (a full state) shortens nothing; a longer one extends it.
  limits.shared.holdOff('u:ann', 1000)
  expect(limits.admitPrincipal(user('ann'))?.retryAfterMs).toBe(4000)
  limits.shared.holdOff('ip:3.3.3.3', 6000)
  expect(limits.admitAddress('3.3.3.3')?.retryAfterMs).toBe(6000)
  // A hold-off heard is not sent on as one set here; a full state has every one in force.
  expect(limits.shared.heldOff()).toEqual([])
  expect(limits.shared.holds().sort()).toEqual([['ip:3.3.3.3', 6000], ['u:ann', 4000], ['u:bob', 2000]])
  t += 2000
  expect(limits.admitPrincipal(user('bob'))).toBeUndefined()
  expect(limits.shared.holds().sort()).toEqual([['ip:3.3.3.3', 4000], ['u:ann', 2000]])
  limits.stop()
})

test('shared connects: what this node let in per address is read once; what other nodes let in is spent here, into debt', () => {
  let t = 0
  const limits = createConnectionLimits({ config, now: () => t, share: true })
  expect(limits.admitAddress('1.1.1.1')).toBeUndefined()
  expect(limits.admitAddress('1.1.1.1')).toBeUndefined()
  expect(limits.shared.connects.drain()).toEqual([['ip:1.1.1.1', 2]])
  expect(limits.shared.connects.drain()).toEqual([])
  // Another node let 4.4.4.4 in 6 times: past the burst (4), so the next wait is 2 connects' refill (1 s) more.
  limits.shared.connects.debit('ip:4.4.4.4', 6)
  expect(limits.admitAddress('4.4.4.4')).toMatchObject({ code: 'rate_limited', retryAfterMs: 1500 })
  expect(limits.shared.connects.drain()).toEqual([]) // a refused connect took nothing
  t += 1500
  expect(limits.admitAddress('4.4.4.4')).toBeUndefined()
  limits.stop()
})

test('not shared: nothing is kept to send', () => {
  const limits = createConnectionLimits({ config, onHoldOff: () => { throw new Error('told') } })
  limits.holdOff('1.1.1.1', user('ann'), 5000)
  limits.admitAddress('1.1.1.1')
  expect(limits.shared.heldOff()).toEqual([])
  expect(limits.shared.connects.drain()).toEqual([])
  limits.stop()
})
