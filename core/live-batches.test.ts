import { expect, test } from 'bun:test'
import type { ChangeRun } from './channels'
import { encodeLiveBatch, liveBatchMessages, MAX_BATCH_CHARS, MIN_COMPRESSED_CHARS, runsOfData, runsOfMessage } from './live-batches'

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

test('compressed batches: long ones go out as zstd frames and read back as the same runs; short ones and single runs as JSON', () => {
  const runs = Array.from({ length: 100 }, (_, i) => run(`leaderboard:b${i}`, i + 1))
  const [batch] = liveBatchMessages('pre', 0, runs)
  expect(batch.body.length).toBeGreaterThan(MIN_COMPRESSED_CHARS)
  const sent = encodeLiveBatch(batch.body, true)
  expect(sent).toBeInstanceOf(Uint8Array)
  const bytes = sent as Uint8Array
  expect([...bytes.subarray(0, 4)]).toEqual([0x28, 0xb5, 0x2f, 0xfd])
  expect(bytes.length).toBeLessThan(batch.body.length / 4)
  expect(runsOfData(bytes)).toEqual(JSON.parse(batch.body).runs)
  // Not recorded (an API node of the last version may follow): as it is.
  expect(encodeLiveBatch(batch.body, false)).toBe(batch.body)
  // Too short to gain: as it is, and read as JSON.
  const [short] = liveBatchMessages('pre', 0, runs.slice(0, 2))
  expect(short.body.length).toBeLessThan(MIN_COMPRESSED_CHARS)
  expect(encodeLiveBatch(short.body, true)).toBe(short.body)
  expect(runsOfData(new TextEncoder().encode(short.body)).map((r) => r.version)).toEqual([1, 2])
  // One run on its channel's subject (the sweeper's, a restart run, a deployment from before live batches).
  const one: ChangeRun = { channel: 'chat:r', version: 3, epoch: 'e', changes: [], at: '' }
  expect(runsOfData(new TextEncoder().encode(JSON.stringify(one)))).toEqual([one])
})

test('a message that is neither JSON nor a zstd frame of JSON throws (the feed logs it as unreadable)', () => {
  expect(() => runsOfData(new TextEncoder().encode('not json'))).toThrow()
  expect(() => runsOfData(new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3]))).toThrow()
  expect(() => runsOfData(Bun.zstdCompressSync('not json'))).toThrow()
})
