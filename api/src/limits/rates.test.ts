import { expect, test } from 'bun:test'
import { loadConfig } from '../../../core/config'
import { ANONYMOUS, rootKey, type Principal } from '../auth/principal'
import { chargeRequest, requestCost } from './index'
import { createRateLimits } from './rates'
import { Invalid, RateLimited } from '../errors'

const user = (id: string): Principal => ({ kind: 'user', id, roles: [], channels: [], expiresAt: Date.now() + 3600_000 })
const config = loadConfig({
  FANFARE_WS_PUBLISHES_PER_SECOND: '2',
  FANFARE_WS_PUBLISH_BURST: '3',
  FANFARE_WS_SUBSCRIBES_PER_SECOND: '5',
  FANFARE_USER_OPS_PER_SECOND: '4',
  FANFARE_USER_OPS_BURST: '5',
  FANFARE_KEY_OPS_PER_SECOND: '100',
  FANFARE_KEY_OPS_BURST: '200',
  FANFARE_ANONYMOUS_OPS_PER_SECOND: '10',
  FANFARE_ANONYMOUS_OPS_BURST: '12',
})

test('one budget per user across all their sockets; each socket also has its own', () => {
  let t = 0
  const rates = createRateLimits({ config, maxSubscriptions: 10, now: () => t })
  const ann = user('ann')
  const one = rates.connection()
  const two = rates.connection()
  expect([one.publish(ann), one.publish(ann), one.publish(ann)]).toEqual([undefined, undefined, undefined])
  // The socket's own burst (3) is spent; the user's budget (5) is not.
  expect(one.publish(ann)).toMatchObject({ code: 'rate_limited', retryAfterMs: 500, perSecond: 2, message: expect.stringContaining('per connection') })
  expect([two.publish(ann), two.subscribe(ann)]).toEqual([undefined, undefined])
  // Now the user's budget is spent (3 + 2), whichever socket asks, and for any command.
  expect(two.publish(ann)).toMatchObject({ code: 'rate_limited', retryAfterMs: 250, perSecond: 4, message: expect.stringContaining('per user') })
  expect(rates.connection().subscribe(ann)?.code).toBe('rate_limited')
  expect(rates.charge(ann)?.code).toBe('rate_limited')
  // Another user is untouched; refusals spent nothing: 250 ms later exactly one more passes.
  expect(rates.connection().publish(user('bob'))).toBeUndefined()
  t += 250
  expect(two.publish(ann)).toBeUndefined()
  expect(two.publish(ann)?.code).toBe('rate_limited')
  rates.stop()
})

test('keys: no per-socket publish limit, one budget per key', () => {
  const rates = createRateLimits({ config, maxSubscriptions: 10, now: () => 0 })
  const key = rootKey('ingest')
  const conn = rates.connection()
  for (let i = 0; i < 200; i++) expect(conn.publish(key)).toBeUndefined()
  expect(rates.connection().publish(key)).toMatchObject({ perSecond: 100, message: expect.stringContaining('per API key') })
  rates.stop()
})

test("anonymous callers: each socket's subscribe bucket, and one budget per address over its sockets and REST reads", () => {
  let t = 0
  const rates = createRateLimits({ config, maxSubscriptions: 10, now: () => t })
  const one = rates.connection('10.0.0.1')
  for (let i = 0; i < 10; i++) expect(one.subscribe(ANONYMOUS)).toBeUndefined()
  // The socket's bucket (10) is spent first; the address's (12) has 2 left.
  expect(one.subscribe(ANONYMOUS)).toMatchObject({ perSecond: 5, message: expect.stringContaining('subscribes per second per connection') })
  const two = rates.connection('10.0.0.1')
  expect([two.subscribe(ANONYMOUS), rates.charge(ANONYMOUS, 1, '10.0.0.1')]).toEqual([undefined, undefined])
  // Now the address's budget is spent: a fresh socket from it, or a REST read, is refused.
  expect(rates.connection('10.0.0.1').subscribe(ANONYMOUS)).toMatchObject({ retryAfterMs: 100, perSecond: 10, message: expect.stringContaining('per address of anonymous callers') })
  expect(rates.charge(ANONYMOUS, 1, '10.0.0.1')?.code).toBe('rate_limited')
  // Another address is untouched; a user at the same address has a budget of its own.
  expect([rates.connection('10.0.0.2').subscribe(ANONYMOUS), rates.charge(ANONYMOUS, 1, '10.0.0.2'), rates.charge(user('ann'), 1)]).toEqual([undefined, undefined, undefined])
  // A request from inside the process (no address) has no budget.
  expect(rates.charge(ANONYMOUS, 1000)).toBeUndefined()
  t += 100
  expect(two.subscribe(ANONYMOUS)).toBeUndefined()
  expect(two.subscribe(ANONYMOUS)?.code).toBe('rate_limited')
  rates.stop()
})

test('REST: a request costs one per event it carries; more than the budget can hold is 422', () => {
  expect([requestCost(undefined), requestCost({ type: 'x' }), requestCost({ events: [1, 2, 3] }), requestCost({ events: [] })]).toEqual([1, 1, 3, 1])
  const rates = createRateLimits({ config, maxSubscriptions: 10, now: () => 0 })
  const ann = user('ann')
  // Over the burst (5): refused, and it costs one (a free refusal would be a free flood).
  expect(() => chargeRequest(rates, ann, { events: [1, 2, 3, 4, 5, 6] })).toThrow(Invalid)
  chargeRequest(rates, ann, { events: [1, 2, 3] })
  chargeRequest(rates, ann, undefined)
  try {
    chargeRequest(rates, ann, undefined)
    throw new Error('not refused')
  } catch (err) {
    expect(err).toBeInstanceOf(RateLimited)
    expect((err as RateLimited).retryAfterMs).toBe(250)
  }
  rates.stop()
})

test('prune forgets budgets that refilled, and only those', () => {
  let t = 0
  const rates = createRateLimits({ config, maxSubscriptions: 10, now: () => t })
  rates.charge(user('ann'))
  rates.charge(user('bob'))
  t += 100
  rates.charge(user('bob'))
  t += 200 // ann is full again (1 token at 4/s = 250 ms), bob is not
  rates.prune()
  expect(rates.size()).toBe(1)
  rates.stop()
})

test('shared: what a node charged each budget is read once per interval (net of refunds); what another node charged is spent here, into debt', () => {
  let t = 0
  const rates = createRateLimits({ config, maxSubscriptions: 10, now: () => t, share: true })
  const ann = user('ann')
  const socket = rates.connection('5.5.5.5')
  expect(socket.publish(ann)).toBeUndefined()
  expect(rates.charge(ann, 2)).toBeUndefined()
  expect(socket.subscribe(ANONYMOUS)).toBeUndefined()
  rates.refund(ann, 1)
  // One entry per budget (per-socket buckets are not shared); refused charges cost nothing.
  expect(rates.charge(ann, 5)?.code).toBe('rate_limited')
  expect(rates.shared.drain().sort()).toEqual([['address:5.5.5.5', 1], ['u:ann', 2]])
  expect(rates.shared.drain()).toEqual([])
  // Another node charged bob 7 (his budget is 5): this node's bucket of bob is in debt, so bob
  // waits for 3 tokens here (750 ms at 4/s), not just 1.
  rates.shared.debit('u:bob', 7)
  expect(rates.charge(user('bob'))).toMatchObject({ code: 'rate_limited', retryAfterMs: 750 })
  // A key's and an anonymous address's budgets are known by their ids.
  rates.shared.debit(rootKey('ingest').root!, 200)
  expect(rates.charge(rootKey('ingest'))?.code).toBe('rate_limited')
  rates.shared.debit('address:6.6.6.6', 12)
  expect(rates.charge(ANONYMOUS, 1, '6.6.6.6')?.code).toBe('rate_limited')
  // Another node's refund gives back.
  rates.shared.debit('u:bob', -3)
  expect(rates.charge(user('bob'))).toBeUndefined()
  rates.stop()
})

test('not shared: nothing is kept for other nodes', () => {
  const rates = createRateLimits({ config, maxSubscriptions: 10 })
  expect(rates.charge(user('ann'))).toBeUndefined()
  expect(rates.shared.drain()).toEqual([])
  rates.stop()
})

test('the ladder: a warning once a budget is below a fifth of its burst, before any refusal; again only after it came back to half', () => {
  let t = 0
  const rates = createRateLimits({ config: loadConfig({ FANFARE_KEY_OPS_PER_SECOND: '10', FANFARE_KEY_OPS_BURST: '10' }), maxSubscriptions: 10, now: () => t })
  const key = rootKey('ingest')
  const conn = rates.connection()
  const steps: string[] = []
  for (let i = 0; i < 11; i++) {
    const refused = conn.publish(key)
    const warning = refused ? undefined : conn.warning(key)
    steps.push(refused ? 'refused' : warning ? `warned ${warning.remaining}` : 'ok')
  }
  // 10 tokens: after the 9th publish 1 is left (a tenth), the first step under a fifth.
  expect(steps).toEqual(['ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'warned 1', 'ok', 'refused'])
  expect(conn.warning(key)).toBeUndefined() // said once
  t += 300 // 3 back: still under half, not said again
  conn.publish(key)
  expect(conn.warning(key)).toBeUndefined()
  t += 700 // 7 more (9): back over half, checked at the next command that passes (8 left)
  expect(conn.publish(key)).toBeUndefined()
  expect(conn.warning(key)).toBeUndefined()
  for (let i = 0; i < 6; i++) conn.publish(key) // 2 left: a fifth, not below it
  expect(conn.warning(key)).toBeUndefined()
  conn.publish(key)
  expect(conn.warning(key)).toMatchObject({ code: 'rate_limit_near', remaining: 1, burst: 10, perSecond: 10, message: expect.stringContaining('per API key') })
  rates.stop()
})

test("a user's socket is warned for whichever of its budgets is nearer to refusing: its own publishes or the user's", () => {
  const rates = createRateLimits({ config, maxSubscriptions: 10, now: () => 0 })
  const ann = user('ann')
  const conn = rates.connection()
  // The socket's burst is 3, the user's 5: after 3 publishes the socket's bucket is empty (0 of 3), the user's at 2 of 5.
  conn.publish(ann)
  conn.publish(ann)
  expect(conn.warning(ann)).toBeUndefined() // 1 of 3 (a third), 3 of 5
  conn.publish(ann)
  expect(conn.warning(ann)).toMatchObject({ remaining: 0, burst: 3, message: expect.stringContaining('per connection') })
  rates.stop()
})

test("standing: a caller's budget for REST's RateLimit fields, whole tokens, never below 0", () => {
  let t = 0
  const rates = createRateLimits({ config, maxSubscriptions: 10, now: () => t })
  const ann = user('ann')
  expect(rates.standing(ann)).toEqual({ name: 'user', burst: 5, windowS: 2, remaining: 5, fullInS: 0 })
  rates.charge(ann, 4)
  expect(rates.standing(ann)).toEqual({ name: 'user', burst: 5, windowS: 2, remaining: 1, fullInS: 1 })
  rates.shared.debit('u:ann', 10) // other nodes spent it: in debt
  expect(rates.standing(ann)).toMatchObject({ remaining: 0, fullInS: 4 })
  expect(rates.standing(ANONYMOUS, '10.0.0.1')).toMatchObject({ name: 'address', burst: 12 })
  expect(rates.standing(ANONYMOUS)).toBeUndefined()
  rates.stop()
})

test('chargeStanding: what charge then standing say, from one charge (a refusal counted as REST, charging nothing)', () => {
  let t = 0
  const refusals: string[] = []
  const rates = createRateLimits({ config, maxSubscriptions: 10, now: () => t, onRefused: (what, kind) => refusals.push(`${what} ${kind}`) })
  const ann = user('ann')
  expect(rates.chargeStanding(ann, 4)).toEqual({ standing: { name: 'user', burst: 5, windowS: 2, remaining: 1, fullInS: 1 } })
  expect(rates.standing(ann)).toEqual({ name: 'user', burst: 5, windowS: 2, remaining: 1, fullInS: 1 })
  expect(rates.chargeStanding(ann, 2)).toEqual({ refused: { code: 'rate_limited', message: expect.stringContaining('per user'), retryAfterMs: 250, perSecond: 4 } })
  expect(refusals).toEqual(['rest user'])
  expect(rates.standing(ann)?.remaining).toBe(1)
  expect(rates.chargeStanding(ANONYMOUS, 1)).toEqual({ standing: undefined }) // no address: no budget
  expect(rates.chargeStanding(ANONYMOUS, 1, '10.0.0.1')).toMatchObject({ standing: { name: 'address', remaining: 11 } })
  rates.stop()
})

test("a warning asked for another principal than the command just charged (the socket's principal changed) reads that principal's budget", () => {
  const rates = createRateLimits({ config, maxSubscriptions: 10, now: () => 0 })
  const conn = rates.connection()
  const bob = user('bob')
  rates.charge(bob, 5) // bob's budget: empty
  expect(conn.subscribe(rootKey('ingest'))).toBeUndefined() // the key's budget: 199 of 200
  expect(conn.warning(bob)).toMatchObject({ code: 'rate_limit_near', remaining: 0, burst: 5, message: expect.stringContaining('per user') })
  rates.stop()
})
