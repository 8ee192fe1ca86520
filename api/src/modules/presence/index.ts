import { Elysia, t } from 'elysia'
import { parseChannel } from '../../../../core/channels'
import { NAME_CHARS, NAME_IN_WORDS } from '../../../../core/events'
import { maySubscribe } from '../../auth/permissions'
import type { AuthPlugin } from '../../auth/plugin'
import type { RoomAccess } from '../../auth/rooms'
import { ErrorResponse } from '../../error-model'
import { Forbidden, Invalid } from '../../errors'
import type { Presence } from '../../presence'
import { isTracked } from '../../presence/feed'

export const PresenceParams = t.Object({
  channel: t.String({
    pattern: `^(chat|stream|match):${NAME_CHARS}$`,
    description: 'a tracked channel: chat:<room>, stream:<id> or match:<id>',
    // Else "invalid params" and the pattern quoted back (`/v1/presence/leaderboard:arena`).
    error: `channel must be chat:<room>, stream:<stream> or match:<match> (${NAME_IN_WORDS}): presence is kept for these`,
  }),
})

export const PresenceSnapshot = t.Object({
  channel: t.String(),
  connections: t.Integer({ description: 'open connections subscribed to the channel, anonymous viewers included, on every node' }),
  users: t.Integer({ description: 'distinct users among them' }),
  members: t.Optional(t.Array(t.Object({ user: t.String(), name: t.Optional(t.String()) }), { description: 'only for channels of at most FANFARE_PRESENCE_MAX_MEMBERS users' })),
  asOf: t.String({ description: 'ISO 8601' }),
})

/** `GET /v1/presence/:channel`: who is in a tracked channel, cluster-wide (as `presence:<channel>` would snapshot it). */
export function presenceModule(deps: { auth: AuthPlugin; presence: Presence; rooms: RoomAccess }) {
  return new Elysia({ prefix: '/v1/presence' }).use(deps.auth).get(
    '/:channel',
    async ({ params, principal }) => {
      const parsed = parseChannel(params.channel)
      if (!parsed || !isTracked(params.channel)) throw new Invalid('invalid_request', `${params.channel} is not a channel with presence`)
      const visibility = parsed.kind === 'chat' ? await deps.rooms.visibility(parsed.name) : 'public'
      const access = maySubscribe(principal, params.channel, visibility)
      if (!access.ok) throw new Forbidden(access.reason, { channel: params.channel })
      return deps.presence.snapshot(params.channel)
    },
    {
      auth: 'viewer',
      params: PresenceParams,
      response: { 200: PresenceSnapshot, 401: ErrorResponse, 403: ErrorResponse, 422: ErrorResponse },
      detail: {
        tags: ['presence'],
        summary: 'Who is in a channel',
        description: 'Connections and users subscribed to the channel on every API node, with the members of small channels. Allowed for whoever may subscribe to the channel.',
      },
    },
  )
}
