import { expect, test } from 'bun:test'
import { presence, type PresenceState } from './presence'

test("a present member's new display name (an update) replaces theirs in place: no member lost, none doubled, order kept", () => {
  const s: PresenceState = { channel: 'chat:x', connections: 2, users: 2, members: [{ user: 'ann', name: 'Ann' }, { user: 'bob' }], asOf: '' }
  const next = presence.apply(s, { kind: 'update', user: 'ann', name: 'Annie', connections: 2, users: 2 }, 0)
  expect(next).toMatchObject({ users: 2, members: [{ user: 'ann', name: 'Annie' }, { user: 'bob' }] })
})
