import { describe, expect, test } from 'bun:test'
import { createLocalPresence } from './local'
import { createPresenceView, goneKey, type PresenceChange } from './view'

function recorder() {
  const changes: PresenceChange[] = []
  const view = createPresenceView((c) => changes.push(c))
  const joins = () => changes.filter((c) => c.kind !== 'count').map((c) => (c.kind === 'join' ? `+${c.user}` : c.kind === 'leave' ? `-${c.user}:${c.reason}` : c.kind === 'update' ? `~${c.user}:${c.name}` : ''))
  return { view, changes, joins }
}

describe('presence view (the cluster as one node sees it)', () => {
  test('a user on two nodes is one user; connections add up; they leave only when no node has them', () => {
    const { view, joins } = recorder()
    view.apply('a', [{ channel: 'chat:x', connections: 2, add: [['ann', 'Ann']] }])
    view.apply('b', [{ channel: 'chat:x', connections: 3, add: [['ann', 'Ann'], ['bob', undefined]] }])
    expect(view.of('chat:x').connections).toBe(5)
    expect([...view.of('chat:x').users.keys()].sort()).toEqual(['ann', 'bob'])
    view.apply('a', [{ channel: 'chat:x', connections: 0, remove: [['ann', 'left']] }])
    expect(view.of('chat:x').users.has('ann')).toBe(true)
    view.apply('b', [{ channel: 'chat:x', connections: 1, remove: [['ann', 'disconnected']] }])
    expect(joins()).toEqual(['+ann', '+bob', '-ann:disconnected'])
    expect(view.of('chat:x').connections).toBe(1)
  })

  test('a user without a name reported by another node (null once through JSON) has no name, not a null one', () => {
    const { view, changes } = recorder()
    const overNats = JSON.parse(JSON.stringify([{ channel: 'match:m', connections: 1, add: [['gina', undefined]] }]))
    view.apply('b', overNats)
    expect(view.of('match:m').users.get('gina')).toEqual({ name: undefined, nodes: 1 })
    expect(changes.find((c) => c.kind === 'join')).toEqual({ kind: 'join', channel: 'match:m', user: 'gina' })
  })

  test('a lost node takes its users with it (node_lost), not those another node still has', () => {
    const { view, joins } = recorder()
    view.apply('a', [{ channel: 'chat:x', connections: 1, add: [['ann', undefined]] }, { channel: 'chat:y', connections: 4, add: [['cy', undefined]] }])
    view.apply('b', [{ channel: 'chat:x', connections: 1, add: [['ann', undefined], ['bob', undefined]] }])
    expect([...view.drop('b')].sort()).toEqual(['chat:x'])
    expect(joins()).toEqual(['+ann', '+cy', '+bob', '-bob:node_lost'])
    expect(view.of('chat:x')).toMatchObject({ connections: 1 })
    expect(view.nodes()).toEqual(['a'])
  })

  test("a full state replaces a node's part: the differences become joins, renames and leaves (with the reasons the node gives, else unknown), and the channels touched are named", () => {
    const { view, joins } = recorder()
    view.apply('a', [{ channel: 'chat:x', connections: 3, add: [['ann', undefined], ['bob', undefined], ['dan', undefined]] }, { channel: 'chat:y', connections: 1, add: [['yo', undefined]] }])
    const gone = new Map([[goneKey('chat:x', 'dan'), 'revoked' as const], [goneKey('chat:y', 'yo'), 'left' as const]])
    const touched = view.replace('a', new Map([['chat:x', { connections: 2, users: new Map([['bob', 'Bob'], ['cat', undefined]]) }], ['chat:z', { connections: 1, users: new Map() }]]), gone)
    expect([...touched].sort()).toEqual(['chat:x', 'chat:y', 'chat:z'])
    expect(joins()).toEqual(['+ann', '+bob', '+dan', '+yo', '~bob:Bob', '+cat', '-ann:unknown', '-dan:revoked', '-yo:left'])
    expect(view.of('chat:x').users.get('bob')?.name).toBe('Bob')
    expect(view.of('chat:y')).toMatchObject({ connections: 0 })
    expect(view.of('chat:z')).toMatchObject({ connections: 1 })
  })

  test('a new display name of a present user is an update, whichever node reports it; none, or the same, is no change', () => {
    const { view, joins } = recorder()
    view.apply('a', [{ channel: 'chat:x', connections: 1, add: [['ann', 'Ann']] }])
    view.apply('a', [{ channel: 'chat:x', connections: 2, add: [['ann', 'Annie']] }])
    view.apply('b', [{ channel: 'chat:x', connections: 1, add: [['ann', 'Anna']] }])
    view.apply('b', [{ channel: 'chat:x', connections: 2, add: [['ann', undefined]] }])
    view.apply('a', [{ channel: 'chat:x', connections: 3, add: [['ann', 'Anna']] }])
    expect(joins()).toEqual(['+ann', '~ann:Annie', '~ann:Anna'])
    expect(view.of('chat:x').users.get('ann')?.name).toBe('Anna')
  })
})

describe("a node's own presence", () => {
  function local(graceMs = 1000) {
    const due: (() => void)[] = []
    const { view, joins } = recorder()
    const presence = createLocalPresence({
      graceMs,
      onDelta: (d) => view.apply('me', [d]),
      timers: { set: (fn) => due.push(fn), clear: (h) => void (due[(h as number) - 1] = () => {}) },
    })
    // timers.set returns the push count: the 1-based index of the timer
    return { presence, view, joins, fire: () => due.splice(0).forEach((f) => f()) }
  }

  test('connections and users: a user with two tabs is one user and two connections; anonymous viewers are connections', () => {
    const { presence, view } = local()
    presence.track('chat:x', 'c1', { user: 'ann', name: 'Ann' })
    presence.track('chat:x', 'c2', { user: 'ann', name: 'Ann' })
    presence.track('chat:x', 'c3', {})
    expect(view.of('chat:x').connections).toBe(3)
    expect([...view.of('chat:x').users.keys()]).toEqual(['ann'])
    expect(presence.state().get('chat:x')).toEqual({ connections: 3, users: new Map([['ann', 'Ann']]) })
  })

  test('an explicit unsubscribe leaves at once; a closed connection lingers for the grace, and coming back in time is no leave', () => {
    const { presence, joins, fire } = local()
    presence.track('chat:x', 'c1', { user: 'ann' })
    presence.track('chat:x', 'c2', { user: 'bob' })
    presence.untrack('chat:x', 'c1', { user: 'ann' }, 'left')
    presence.untrack('chat:x', 'c2', { user: 'bob' }, 'disconnected')
    expect(joins()).toEqual(['+ann', '+bob', '-ann:left'])
    presence.track('chat:x', 'c3', { user: 'bob' }) // the page reloaded
    fire()
    expect(joins()).toEqual(['+ann', '+bob', '-ann:left'])
    presence.untrack('chat:x', 'c3', { user: 'bob' }, 'disconnected')
    fire()
    expect(joins()).toEqual(['+ann', '+bob', '-ann:left', '-bob:disconnected'])
    expect(presence.state().size).toBe(0)
  })

  test('a connection closed for a revoked credential leaves at once as revoked (no grace); its close after that changes nothing; a user with another connection stays', () => {
    const { presence, view, joins, fire } = local()
    presence.track('chat:x', 'c1', { user: 'ann' })
    presence.track('chat:x', 'c2', { user: 'bob' })
    presence.track('chat:x', 'c3', { user: 'bob' })
    presence.untrack('chat:x', 'c1', { user: 'ann' }, 'revoked')
    presence.untrack('chat:x', 'c2', { user: 'bob' }, 'revoked')
    expect(joins()).toEqual(['+ann', '+bob', '-ann:revoked'])
    // The sockets' closes come after (realtime untracks every channel of a closed socket).
    presence.untrack('chat:x', 'c1', { user: 'ann' }, 'disconnected')
    presence.untrack('chat:x', 'c2', { user: 'bob' }, 'disconnected')
    fire()
    expect(joins()).toEqual(['+ann', '+bob', '-ann:revoked'])
    expect(view.of('chat:x').connections).toBe(1)
  })

  test('another node saying a user left for good ends their grace here, for the same reason; a user still connected here, or unknown, is untouched', () => {
    const { presence, joins, fire } = local()
    presence.track('chat:x', 'c1', { user: 'ann' })
    presence.track('chat:x', 'c2', { user: 'bob' })
    presence.untrack('chat:x', 'c1', { user: 'ann' }, 'disconnected')
    presence.endGrace('chat:x', 'ann', 'left')
    presence.endGrace('chat:x', 'bob', 'left')
    presence.endGrace('chat:x', 'cy', 'revoked')
    fire()
    expect(joins()).toEqual(['+ann', '+bob', '-ann:left'])
  })
})
