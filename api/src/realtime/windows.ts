import { parseChannel, type ReactionsChange } from '../../../core/channels'
import type { Config } from '../../../core/config'
import type { Window } from './channel-hub'

/**
 * Two consecutive reaction changes of one stream as one: counts are summed, and each emoji's total
 * is the later one (changes merge in version order, so the later total includes the earlier
 * counts). Returns a new object: `into` may be a notice's own data, which joiners catching up still
 * send as it is.
 */
export function mergeReactions(into: ReactionsChange, next: ReactionsChange): ReactionsChange {
  const counts = { ...into.counts }
  for (const [emoji, n] of Object.entries(next.counts)) counts[emoji] = (counts[emoji] ?? 0) + n
  return { counts, totals: { ...into.totals, ...next.totals } }
}

/**
 * Which channels the hub coalesces (see HubDeps.windowOf): `reactions:<stream>`, one frame per
 * FANFARE_REACTION_WINDOW_MS carrying the window's counts and the running totals. Every other
 * channel gets one frame per change.
 */
export function windowsOf(config: Pick<Config, 'FANFARE_REACTION_WINDOW_MS'>): (channel: string) => Window | undefined {
  const reactions: Window = { ms: config.FANFARE_REACTION_WINDOW_MS, merge: (into, next) => mergeReactions(into as ReactionsChange, next as ReactionsChange) }
  // Asked at every publish: the prefix first, so other channels cost no pattern match.
  return (channel) => (channel.startsWith('reactions:') && parseChannel(channel)?.kind === 'reactions' ? reactions : undefined)
}
