import { expect, test } from 'bun:test'
import type { ChangeRun } from './channels'
import { liveBatchMessages, MAX_BATCH_CHARS, runsOfMessage } from './live-batches'

const run = (channel: string, version: number, filler = ''): { channel: string; body: string } => ({
  channel,
  body: JSON.stringify({ channel, version, epoch: 'e', changes: [{ kind: 'deleted', messageId: filler }], at: '' } satisfies ChangeRun),
})

test('a batch: one message per channel kind on the partition subject, runs in the given order', () => {
  const runs = [run('leaderboard:a', 1), run('user:x', 4), run('leaderboard:a', 2), run('leaderboard:b', 7)]
  const messages = liveBatchMessages('pre', 5, runs)
  expect(messages.map((m) => m.subject)).toEqual(['pre.changes.leaderboard._batch.5', 'pre.changes.user._batch.5'])
  const parsed = messages.map((m) => runsOfMessage(JSON.parse(m.body)).map((r) => `${r.channel}@${r.version}`))
  expect(parsed).toEqual([['leaderboard:a@1', 'leaderboard:a@2', 'leaderboard:b@7'], ['user:x@4']])
  expect(messages[0].items).toEqual([runs[0], runs[2], runs[3]])
})

test('split only past the size bound, every message under it, no run lost or reordered', () => {
  const big = 'x'.repeat(100_000)
  const runs = Array.from({ length: 7 }, (_, i) => run('chat:r', i + 1, big))
  const messages = liveBatchMessages('pre', 0, runs)
  expect(messages.map((m) => m.items.length)).toEqual([2, 2, 2, 1])
  for (const m of messages) expect(m.body.length).toBeLessThan(MAX_BATCH_CHARS + 64)
  expect(messages.flatMap((m) => runsOfMessage(JSON.parse(m.body)).map((r) => r.version))).toEqual([1, 2, 3, 4, 5, 6, 7])
  // Small runs stay in one message.
  expect(liveBatchMessages('pre', 0, Array.from({ length: 500 }, (_, i) => run('chat:r', i + 1))).length).toBe(1)
})

test('a message of one run (the old shape, and the sweeper\'s) reads as that run', () => {
  const one: ChangeRun = { channel: 'chat:r', version: 3, epoch: 'e', changes: [], at: '' }
  expect(runsOfMessage(one)).toEqual([one])
})
