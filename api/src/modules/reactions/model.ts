import { t } from 'elysia'
import { Name } from '../../../../core/events'

export const StreamParams = t.Object({ stream: Name })

export const ReactionTotals = t.Object({
  stream: t.String(),
  totals: t.Record(t.String(), t.Integer({ minimum: 1 }), {
    description: 'reactions per emoji over the stream\'s whole history; emojis nobody sent are absent',
    examples: [{ '👏': 1520, '❤️': 233 }],
  }),
})
export type ReactionTotals = typeof ReactionTotals.static
