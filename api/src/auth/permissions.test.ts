import { describe, expect, test } from 'bun:test'
import { eventTypes } from '../../../core/events'
import { matches, mayPublish, maySubscribe, publishers, publishersOf } from './permissions'
import { ANONYMOUS, principalId, rootKey, type KeyPrincipal, type UserPrincipal } from './principal'

const user = (over: Partial<UserPrincipal> = {}): UserPrincipal => ({ kind: 'user', id: 'ann', roles: [], channels: [], expiresAt: Date.now() + 60_000, ...over })
const key = (scopes: KeyPrincipal['scopes']): KeyPrincipal => ({ kind: 'key', id: 'key_1', name: 'server', scopes })

describe('who may publish what (the one table)', () => {
  test('every event type has a rule', () => {
    expect(Object.keys(publishers).sort()).toEqual([...eventTypes].sort())
  })

  test('scores: keys with the scope (or publish:*), never players or anonymous viewers', () => {
    expect(mayPublish(key(['publish:score.submitted']), 'score.submitted')).toBe(true)
    expect(mayPublish(key(['publish:*']), 'score.submitted')).toBe(true)
    expect(mayPublish(key(['publish:chat.message.posted']), 'score.submitted')).toBe(false)
    expect(mayPublish(key(['admin:write']), 'score.submitted')).toBe(false)
    expect(mayPublish(user(), 'score.submitted')).toBe(false)
    expect(mayPublish(ANONYMOUS, 'score.submitted')).toBe(false)
    expect(mayPublish(rootKey('ingest'), 'score.submitted')).toBe(true)
  })

  test('chat: users and keys; deletions: admin:write keys and moderators only', () => {
    expect(mayPublish(user(), 'chat.message.posted')).toBe(true)
    expect(mayPublish(ANONYMOUS, 'chat.message.posted')).toBe(false)
    expect(mayPublish(user(), 'chat.message.deleted')).toBe(false)
    expect(mayPublish(user({ roles: ['moderator'] }), 'chat.message.deleted')).toBe(true)
    expect(mayPublish(key(['publish:*']), 'chat.message.deleted')).toBe(false)
    expect(mayPublish(rootKey('ingest'), 'chat.message.deleted')).toBe(false)
    expect(mayPublish(rootKey('admin'), 'chat.message.deleted')).toBe(true)
  })
})

describe('who may subscribe to what', () => {
  test('boards and public rooms: anyone allowed to connect', () => {
    for (const p of [ANONYMOUS, user(), key(['publish:*'])]) {
      expect(maySubscribe(p, 'leaderboard:arena', 'public').ok).toBe(true)
      expect(maySubscribe(p, 'chat:lobby', 'public').ok).toBe(true)
    }
  })

  test('a private room: admin readers and users whose channels claim matches it', () => {
    expect(maySubscribe(ANONYMOUS, 'chat:vip-1', 'private').ok).toBe(false)
    expect(maySubscribe(user(), 'chat:vip-1', 'private').ok).toBe(false)
    expect(maySubscribe(user({ channels: ['chat:vip-*'] }), 'chat:vip-1', 'private').ok).toBe(true)
    expect(maySubscribe(user({ channels: ['chat:vip-2'] }), 'chat:vip-1', 'private').ok).toBe(false)
    expect(maySubscribe(key(['publish:*']), 'chat:vip-1', 'private').ok).toBe(false)
    expect(maySubscribe(key(['admin:read']), 'chat:vip-1', 'private').ok).toBe(true)
  })

  test('user:<id>: that user and admin readers only', () => {
    expect(maySubscribe(user(), 'user:ann', 'public').ok).toBe(true)
    expect(maySubscribe(user({ id: 'bob' }), 'user:ann', 'public').ok).toBe(false)
    expect(maySubscribe(ANONYMOUS, 'user:ann', 'public').ok).toBe(false)
    expect(maySubscribe(rootKey('admin'), 'user:ann', 'public').ok).toBe(true)
    expect(maySubscribe(rootKey('ingest'), 'user:ann', 'public').ok).toBe(false)
  })

  test('channel patterns: * is a wildcard, everything else literal', () => {
    expect(matches('chat:vip-*', 'chat:vip-')).toBe(true)
    expect(matches('chat:*', 'chat:anything')).toBe(true)
    expect(matches('chat:a.c', 'chat:abc')).toBe(false)
    expect(matches('chat:(x|y)', 'chat:x')).toBe(false)
    expect(matches('*', 'user:bob')).toBe(true)
  })
})

test('principal ids: users and keys never share one, the bootstrap tokens keep theirs', () => {
  expect(principalId(user())).toBe('u:ann')
  expect(principalId(key(['publish:*']))).toBe('k:key_1')
  expect(principalId(rootKey('ingest'))).toBe('ingest')
  expect(principalId(rootKey('admin'))).toBe('admin')
  expect(principalId(ANONYMOUS)).toBe('anonymous')
})

test('a refused publish says who may publish the type: the scope a key lacks, the role a user lacks, or that only users or only the API nodes ever do', () => {
  expect(publishersOf('match.start')).toBe('keys with the scope publish:match.start (or publish:*)')
  expect(publishersOf('match.join')).toBe('users')
  expect(publishersOf('match.leave')).toBe('users and the API nodes')
  expect(publishersOf('match.player.connection')).toBe('the API nodes')
  expect(publishersOf('reaction.batched')).toBe('the API nodes')
  expect(publishersOf('poll.opened')).toBe('users with the moderator role and keys with the scope publish:poll.opened (or publish:*)')
  expect(publishersOf('chat.message.deleted')).toBe('users with the moderator role and keys with the scope admin:write')
})
