import { parseChannel, type ChangeRun, type ChannelKind } from './channels'
import { subjects } from './events'

/**
 * A live batch (core/nats.ts ChangeFormat): the change runs of one worker batch for channels of one
 * kind, published as ONE message on the partition's subject (subjects.changeBatch) instead of one
 * message per run. JetStream's cost of a small message is per message, not per byte
 * (bench/findings.md, "What storing a change run costs"), so a batch touching 100 channels costs
 * one stored message instead of 100; a batch's own bytes are then most of its cost, hence
 * encodeLiveBatch.
 * API nodes' change feeds take both shapes: a message is a live batch if it has `runs`.
 */
export type LiveBatch = { runs: ChangeRun[] }

/**
 * Most UTF-16 units of run bodies in one live batch message: a unit is at most 3 bytes of UTF-8,
 * so a message stays under NATS' default 1 MB max_payload. A run is itself at most this long
 * (outbox.ts MAX_RUN_CHARS), so every run fits in some message.
 */
export const MAX_BATCH_CHARS = 256 * 1024 + 1024

/**
 * The messages of one batch's runs: one per channel kind (each kind has its stream), split where
 * one would pass MAX_BATCH_CHARS. Runs keep their order within a kind (version order per channel),
 * and the messages of a kind follow each other in that order. `body` of each run is its JSON.
 */
export function liveBatchMessages<R extends { channel: string; body: string }>(prefix: string, partition: number, runs: R[]): { subject: string; body: string; items: R[] }[] {
  const byKind = new Map<ChannelKind, R[]>()
  for (const r of runs) {
    const parsed = parseChannel(r.channel)
    if (!parsed) throw new Error(`not a channel: ${r.channel}`)
    const list = byKind.get(parsed.kind) ?? byKind.set(parsed.kind, []).get(parsed.kind)!
    list.push(r)
  }
  const out: { subject: string; body: string; items: R[] }[] = []
  for (const [kind, list] of byKind) {
    const subject = subjects.changeBatch(prefix, kind, partition)
    let items: R[] = []
    let chars = 0
    const close = () => {
      out.push({ subject, body: `{"runs":[${items.map((r) => r.body).join(',')}]}`, items })
      items = []
      chars = 0
    }
    for (const r of list) {
      if (items.length > 0 && chars + r.body.length > MAX_BATCH_CHARS) close()
      items.push(r)
      chars += r.body.length + 1
    }
    if (items.length > 0) close()
  }
  return out
}

/** The runs of a change stream message: the runs of a live batch, or the message's one run. */
export function runsOfMessage(parsed: ChangeRun | LiveBatch): ChangeRun[] {
  return 'runs' in parsed && Array.isArray(parsed.runs) ? parsed.runs : [parsed as ChangeRun]
}

/**
 * Shorter live batches are published as they are: nats-server's cost of a message is mostly its
 * bytes (copied into its store's cache, written, read again to deliver and to remove), and below
 * this the fixed part dominates while compressing still costs both sides a call.
 */
export const MIN_COMPRESSED_CHARS = 1024

/** The first bytes of a zstd frame (RFC 8878): a compressed live batch starts with them, JSON never does. */
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd]
const utf8 = new TextDecoder()

/**
 * A live batch's body as it is published: compressed with zstd when `compress` (the change streams
 * record the `compressed` change format, core/nats.ts ChangeFormat) and it is long enough to gain.
 * A batch's runs are JSON with the same keys over and over: zstd's fastest level takes a 20 KB batch
 * of 100 leaderboard runs to ~1-3 KB in ~15 µs, where nats-server spends ~5 µs a KB on it
 * (bench/findings.md, "Compressed live batches").
 */
export function encodeLiveBatch(body: string, compress: boolean): string | Uint8Array {
  return compress && body.length >= MIN_COMPRESSED_CHARS ? Bun.zstdCompressSync(body, { level: 1 }) : body
}

/**
 * The runs of a change stream message's data: a live batch, compressed (see encodeLiveBatch) or
 * not, or one run (a deployment from before live batches, the sweeper's, a restart run). Throws if
 * it is neither JSON nor a zstd frame of JSON.
 */
export function runsOfData(data: Uint8Array): ChangeRun[] {
  const compressed = data.length >= ZSTD_MAGIC.length && ZSTD_MAGIC.every((b, i) => data[i] === b)
  const text = compressed ? Bun.zstdDecompressSync(data).toString() : utf8.decode(data)
  return runsOfMessage(JSON.parse(text) as ChangeRun | LiveBatch)
}
