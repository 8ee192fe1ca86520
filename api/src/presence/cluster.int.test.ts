import { afterEach, describe, expect, test } from 'bun:test'
import type { NatsConnection } from '@nats-io/transport-node'
import { createLogger } from '../../../core/logger'
import { connectNats } from '../../../core/nats'
import { TEST_NATS_URL } from '../../../core/testing/env'
import { until } from '../../../core/testing/wait'
import { startPresenceCluster } from './cluster'
import { createLocalPresence } from './local'
import { createPresenceView, type PresenceChange } from './view'

const logger = createLogger('silent')

/** A node's presence over a real NATS: its local part, its cluster transport and its view. */
async function node(name: string, prefix: string, opts: { dropDeltas?: () => boolean } = {}) {
  const nc = await connectNats(TEST_NATS_URL, `presence-${name}`)
  // A lossy connection for one test: the same real connection, with some of this node's deltas
  // never sent (as if lost while it was cut off).
  const transport = opts.dropDeltas
    ? (new Proxy(nc, {
        get(target, key) {
          if (key === 'publish') {
            return (subject: string, data: string) => {
              if (String(data).includes('"type":"delta"') && opts.dropDeltas!()) return
              return target.publish(subject, data)
            }
          }
          const value = Reflect.get(target, key)
          return typeof value === 'function' ? value.bind(target) : value
        },
      }) as NatsConnection)
    : nc
  const changes: PresenceChange[] = []
  const resyncs: string[][] = []
  const view = createPresenceView((c) => changes.push(c))
  let cluster: ReturnType<typeof startPresenceCluster> | undefined
  const local = createLocalPresence({ graceMs: 500, onDelta: (d) => cluster?.local(d) })
  cluster = startPresenceCluster({
    nc: transport,
    prefix,
    node: name,
    inc: crypto.randomUUID().slice(0, 8),
    view,
    localState: () => local.state(),
    ttlMs: 2000,
    graceMs: 500,
    heartbeatMs: 200,
    onResync: (channels) => resyncs.push([...channels]),
    logger,
  })
  return {
    local,
    view,
    changes,
    resyncs,
    cluster,
    stop: async () => {
      await cluster!.stop()
      await nc.close()
    },
  }
}

const running: { stop: () => Promise<void> }[] = []
afterEach(async () => {
  for (const n of running.splice(0)) await n.stop()
})

describe('presence between nodes over NATS', () => {
  test('a newcomer learns every node’s presence at once (hello, full states)', async () => {
    const prefix = `pt_${crypto.randomUUID().slice(0, 8)}`
    const a = await node('a', prefix)
    running.push(a)
    a.local.track('chat:x', 'c1', { user: 'ann' })
    a.local.track('chat:x', 'c2', {})
    const b = await node('b', prefix)
    running.push(b)
    await until('b sees a', () => b.view.of('chat:x').connections === 2 && b.view.of('chat:x').users.has('ann'), 3000)
  })

  test('a missed update is noticed from the next numbers, and repaired with a full state and a resync: never a silent divergence', async () => {
    const prefix = `pt_${crypto.randomUUID().slice(0, 8)}`
    let drop = false
    const a = await node('a', prefix, { dropDeltas: () => drop })
    const b = await node('b', prefix)
    running.push(a, b)
    a.local.track('chat:x', 'c1', { user: 'ann' })
    await until('b sees ann', () => b.view.of('chat:x').users.has('ann'), 3000)
    // From now on A's deltas are lost (full states still go through): B can only learn of bob by
    // noticing, from A's heartbeats, a number it never got, and asking for A's full state.
    drop = true
    a.local.track('chat:x', 'c2', { user: 'bob' })
    await until('b repaired', () => b.view.of('chat:x').users.has('bob'), 3000)
    expect(b.resyncs.flat()).toContain('chat:x')
  })

  test('a repair from a full state tells each leave it missed with its real reason (left, revoked, disconnected), not all as disconnected', async () => {
    const prefix = `pt_${crypto.randomUUID().slice(0, 8)}`
    let drop = false
    const a = await node('a', prefix, { dropDeltas: () => drop })
    const b = await node('b', prefix)
    running.push(a, b)
    for (const [conn, user] of [['c1', 'ann'], ['c2', 'bob'], ['c3', 'cat']]) a.local.track('chat:x', conn, { user })
    a.local.track('chat:y', 'c4', { user: 'dan' })
    await until('b sees all four', () => b.view.of('chat:x').users.size === 3 && b.view.of('chat:y').users.has('dan'), 3000)
    // A's deltas are lost from now on: B learns of these leaves only from A's full states.
    drop = true
    a.local.untrack('chat:x', 'c1', { user: 'ann' }, 'left')
    a.local.untrack('chat:x', 'c2', { user: 'bob' }, 'revoked')
    a.local.untrack('chat:x', 'c3', { user: 'cat' }, 'disconnected') // leaves after A's grace (500 ms)
    a.local.untrack('chat:y', 'c4', { user: 'dan' }, 'left') // the channel's last: A no longer reports it at all
    await until('b repaired', () => b.view.of('chat:x').users.size === 0 && b.view.of('chat:y').users.size === 0, 3000)
    expect(b.resyncs.flat()).toContain('chat:x')
    const leaves = b.changes.filter((c) => c.kind === 'leave').map((c) => c.kind === 'leave' && `${c.user}:${c.reason}`)
    expect(leaves.sort()).toEqual(['ann:left', 'bob:revoked', 'cat:disconnected', 'dan:left'])
  })

  test('a node that stops says goodbye: its users leave as disconnected after the grace, not as lost', async () => {
    const prefix = `pt_${crypto.randomUUID().slice(0, 8)}`
    const a = await node('a', prefix)
    const b = await node('b', prefix)
    running.push(b)
    a.local.track('chat:x', 'c1', { user: 'ann' })
    await until('b sees ann', () => b.view.of('chat:x').users.has('ann'), 3000)
    await a.stop()
    await until('ann leaves', () => !b.view.of('chat:x').users.has('ann'), 3000)
    expect(b.changes.filter((c) => c.kind === 'leave')).toEqual([{ kind: 'leave', channel: 'chat:x', user: 'ann', reason: 'disconnected' }])
  })

  test('a node that says goodbye and comes back under the same id (a container restarted in place): users who reconnect to it within the grace never leave nor join; the others leave once, after the grace', async () => {
    const prefix = `pt_${crypto.randomUUID().slice(0, 8)}`
    const a = await node('a', prefix)
    const b = await node('b', prefix)
    running.push(b)
    a.local.track('chat:x', 'c1', { user: 'ann' })
    a.local.track('chat:x', 'c2', { user: 'bob' })
    await until('b sees both', () => b.view.of('chat:x').users.size === 2, 3000)
    await a.stop()
    const again = await node('a', prefix)
    running.push(again)
    again.local.track('chat:x', 'c3', { user: 'ann' })
    await until('b hears the new run', () => b.cluster.peers().includes('a') && b.view.of('chat:x').connections === 1, 3000)
    // Past the grace of the goodbye (500 ms), with room for a late timer.
    await Bun.sleep(1500)
    expect(b.changes.filter((c) => c.kind !== 'count')).toEqual([
      { kind: 'join', channel: 'chat:x', user: 'ann' },
      { kind: 'join', channel: 'chat:x', user: 'bob' },
      { kind: 'leave', channel: 'chat:x', user: 'bob', reason: 'disconnected' },
    ])
    expect([...b.view.of('chat:x').users.keys()]).toEqual(['ann'])
  })

  test('a user of a node that said goodbye who reconnects to another node and leaves there for good leaves at once with that reason, on every node, not as disconnected after the grace', async () => {
    const prefix = `pt_${crypto.randomUUID().slice(0, 8)}`
    const a = await node('a', prefix)
    const b = await node('b', prefix)
    const c = await node('c', prefix)
    running.push(b, c)
    a.local.track('chat:x', 'c1', { user: 'ann' })
    await until('b and c see ann', () => b.view.of('chat:x').users.has('ann') && c.view.of('chat:x').users.has('ann'), 3000)
    await a.stop()
    b.local.track('chat:x', 'c2', { user: 'ann' })
    await until('c hears the goodbye and b', () => c.view.of('chat:x').connections === 2 && !c.cluster.peers().includes('a'), 3000)
    const leftAt = Date.now()
    b.local.untrack('chat:x', 'c2', { user: 'ann' }, 'left')
    // B's own view (its local change) and C's (B's delta) alike, well within the grace (500 ms).
    await until('ann leaves on b and c', () => !b.view.of('chat:x').users.has('ann') && !c.view.of('chat:x').users.has('ann'), 3000)
    const took = Date.now() - leftAt
    for (const n of [b, c]) expect(n.changes.filter((x) => x.kind === 'leave').map((x) => x.kind === 'leave' && x.reason)).toEqual(['left'])
    expect(took).toBeLessThan(400)
    await Bun.sleep(800)
    for (const n of [b, c]) expect(n.changes.filter((x) => x.kind === 'leave')).toEqual([{ kind: 'leave', channel: 'chat:x', user: 'ann', reason: 'left' }])
  })
})
