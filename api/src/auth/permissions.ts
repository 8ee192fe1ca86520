import { parseChannel } from '../../../core/channels'
import type { EventType } from '../../../core/events'
import { hasScope, isAdminReader, type Principal, type Scope } from './principal'

/**
 * Who may publish each event type: the one table (the README's "Who may publish" mirrors it).
 * - `users`: false, true (any user), or a role the user must hold.
 * - `keys`: the scopes of which a key needs one.
 * Anonymous clients never publish.
 */
export const publishers: Record<EventType, { users: boolean | { role: string }; keys: Scope[] }> = {
  // Scores come from game servers, never from players' own clients.
  'score.submitted': { users: false, keys: ['publish:score.submitted'] },
  // Users post as themselves (the server stamps `user`); keys may post on behalf of a user.
  'chat.message.posted': { users: true, keys: ['publish:chat.message.posted'] },
  'chat.message.deleted': { users: { role: 'moderator' }, keys: ['admin:write'] },
  // A broadcast's state comes from the streaming service's servers (and admins).
  'stream.started': { users: false, keys: ['publish:stream.started'] },
  'stream.updated': { users: false, keys: ['publish:stream.updated'] },
  'stream.ended': { users: false, keys: ['publish:stream.ended'] },
  // Written by API nodes from what presence sees; nobody else.
  'stream.viewers.sampled': { users: false, keys: ['system:presence'] },
  'reaction.sent': { users: true, keys: ['publish:reaction.sent'] },
  // API nodes store accepted reactions in batches themselves; nobody publishes one.
  'reaction.batched': { users: false, keys: [] },
  'poll.opened': { users: { role: 'moderator' }, keys: ['publish:poll.opened'] },
  'poll.closed': { users: { role: 'moderator' }, keys: ['publish:poll.closed'] },
  // A vote is a user's own: the voter is the event's principal.
  'poll.voted': { users: true, keys: [] },
  // Matches: game servers create, start, finish and abort them; players join, leave and ready up
  // as themselves (the player is the event's principal); API nodes report players' connections
  // and make a player who stayed disconnected past the grace leave.
  'match.created': { users: false, keys: ['publish:match.created'] },
  'match.join': { users: true, keys: [] },
  'match.leave': { users: true, keys: ['system:presence'] },
  'match.ready': { users: true, keys: [] },
  'match.start': { users: false, keys: ['publish:match.start'] },
  'match.finish': { users: false, keys: ['publish:match.finish'] },
  'match.abort': { users: false, keys: ['publish:match.abort'] },
  'match.player.connection': { users: false, keys: ['system:presence'] },
}

/**
 * Who may publish `type`, in words, for a refusal to say what is missing (a scope, a role, or that
 * no key or no user ever may): `keys with the scope publish:match.start (or publish:*)`, `users`,
 * `users with the moderator role and keys with the scope admin:write`, `the API nodes`.
 */
export function publishersOf(type: EventType): string {
  const rule = publishers[type]
  const who: string[] = []
  if (rule.users === true) who.push('users')
  else if (typeof rule.users === 'object') who.push(`users with the ${rule.users.role} role`)
  const scopes = rule.keys.filter((s) => s !== 'system:presence')
  if (scopes.length > 0) who.push(`keys with the scope ${scopes.map((s) => (s.startsWith('publish:') ? `${s} (or publish:*)` : s)).join(' or ')}`)
  if (rule.keys.includes('system:presence') || who.length === 0) who.push('the API nodes')
  return who.join(' and ')
}

/** Whether `p` may publish events of `type`. */
export function mayPublish(p: Principal, type: EventType): boolean {
  const rule = publishers[type]
  switch (p.kind) {
    case 'anonymous':
      return false
    case 'user':
      return rule.users === true || (typeof rule.users === 'object' && p.roles.includes(rule.users.role))
    case 'key':
      return rule.keys.some((scope) => hasScope(p, scope))
    default: {
      const never: never = p
      throw new Error(`unknown principal ${JSON.stringify(never)}`)
    }
  }
}

/** A room's visibility: a room without settings is public. */
export type Visibility = 'public' | 'private'

/**
 * Whether `p` may subscribe to (and read) `channel`. Boards, streams, polls, streams' reactions, matches and public rooms:
 * anyone allowed to connect. A private room: admin readers, and users whose `channels` claim matches it.
 * `user:<id>`: that user and admin readers. Returns the reason when not.
 */
export function maySubscribe(p: Principal, channel: string, visibility: Visibility): { ok: true } | { ok: false; reason: string } {
  const parsed = parseChannel(channel)
  if (!parsed) return { ok: false, reason: `not a channel: ${channel}` }
  switch (parsed.kind) {
    case 'leaderboard':
    case 'stream':
    case 'poll':
    case 'reactions':
    case 'match':
      return { ok: true }
    case 'chat':
      if (visibility === 'public' || isAdminReader(p)) return { ok: true }
      if (p.kind === 'user' && p.channels.some((pattern) => matches(pattern, channel))) return { ok: true }
      return { ok: false, reason: `${channel} is a private room: it needs a token whose channels claim matches it` }
    case 'user':
      if (isAdminReader(p) || (p.kind === 'user' && p.id === parsed.name)) return { ok: true }
      return { ok: false, reason: `${channel} is the private channel of user ${parsed.name}` }
    default: {
      const never: never = parsed.kind
      throw new Error(`unknown channel kind ${never}`)
    }
  }
}

const patterns = new Map<string, RegExp>()
/** `*` matches any run of characters; everything else literally. */
export function matches(pattern: string, channel: string): boolean {
  let re = patterns.get(pattern)
  if (!re) {
    re = new RegExp(`^${pattern.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`)
    if (patterns.size > 10_000) patterns.clear()
    patterns.set(pattern, re)
  }
  return re.test(channel)
}
