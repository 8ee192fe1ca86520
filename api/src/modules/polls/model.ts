import { t } from 'elysia'
import { Name } from '../../../../core/events'

export const PollParams = t.Object({ poll: Name })

export const PollView = t.Object({
  poll: t.String(),
  stream: t.String(),
  question: t.String(),
  status: t.Union([t.Literal('open'), t.Literal('closed')], { description: 'closed once closed by poll.closed or once closesAt has passed' }),
  options: t.Array(t.Object({ text: t.String(), votes: t.Integer({ minimum: 0 }) }), { description: 'in the order opened; a vote names its 0-based index' }),
  ignoredVotes: t.Integer({ minimum: 0, description: "votes that did not count: a voter's repeats, votes after close, past the options, before the poll opened" }),
  openedAt: t.String({ description: 'ISO 8601, event time of poll.opened' }),
  closesAt: t.Optional(t.String({ description: 'ISO 8601: votes from then on (event time) are ignored' })),
  closedAt: t.Optional(t.String({ description: 'ISO 8601, when it closed' })),
})
export type PollView = typeof PollView.static
