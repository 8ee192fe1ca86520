import { afterAll, describe, expect, test } from 'bun:test'
import { AckPolicy, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import { createInbox, type NatsConnection } from '@nats-io/transport-node'
import { channelOf } from '../../core/channels'
import { changeFormatRecorded, connectNats, ensureStreams, FEED_CONSUMER_DESCRIPTION, OlderNodesFollowing, recordChangeFormat, topology } from '../../core/nats'
import { runsOfData } from '../../core/live-batches'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, runUntilExit, spawnProc, until, waitReady, WsClient, type Proc } from '../e2e/harness'

/**
 * A deployment from before live batches switching to compressed live batches while it runs (`npm
 * run migrate -- --live-batches`): refused while a consumer that is not a change feed of this
 * version follows the change streams (an older API node would miss every update silently); then
 * the running workers publish compressed batches within their watch interval, with no restart, and
 * a subscriber sees every version in order, without a resync. A resume from before the switch gets
 * the missed updates or a resync snapshot, never a gap; one from after it is served from Postgres
 * history. And one of the last version (batches, not compressed): refused while one of its API
 * nodes follows.
 */
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd]
describe('the switch to live batches on a running deployment', () => {
  let env: TestEnv | undefined
  let nc: NatsConnection | undefined
  const procs: Proc[] = []
  const clients: WsClient[] = []
  afterAll(async () => {
    for (const c of clients) c.close()
    await Promise.all(procs.map((p) => p.stop()))
    await nc?.close()
    await env?.cleanup()
  })

  test('refused while an older follower is there; then workers switch, subscribers miss nothing', async () => {
    env = await createTestEnv({ FANFARE_PARTITIONS: '2' })
    nc = await connectNats(env.vars.NATS_URL, 'switch-test')
    const jsm: JetStreamManager = await jetstreamManager(nc)
    const t = topology(env.config)
    const prefix = env.config.FANFARE_SUBJECT_PREFIX
    // What a Fanfare from before live batches left: change streams that do not record them.
    await ensureStreams(nc, env.config, { changes: 'runs' })
    expect(await changeFormatRecorded(jsm, env.config)).toBe('runs')

    const port = freePort()
    procs.push(spawnProc('worker', 'stream-workers/src/main.ts', env.vars))
    procs.push(spawnProc('api', 'api/src/main.ts', { ...env.vars, PORT: String(port), HOST: '127.0.0.1' }))
    const base = `http://127.0.0.1:${port}`
    await waitReady(base, procs)
    // A sum board: every score is a change (a new version).
    const made = await fetch(`${base}/admin/leaderboards/switch`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${env.vars.FANFARE_ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ operator: 'sum' }),
    })
    expect(made.status).toBe(200)
    const channel = channelOf.leaderboard('switch')
    const watcher = await WsClient.open(`ws://127.0.0.1:${port}/v1/ws`)
    clients.push(watcher)
    watcher.send({ op: 'subscribe', ref: 's', channel })
    await until('snapshot', () => watcher.of(channel).length === 1)
    let sent = 0
    const post = async (n: number) => {
      const events = Array.from({ length: n }, () => ({ type: 'score.submitted', data: { board: 'switch', player: `p${sent++ % 7}`, score: 1 } }))
      const res = await fetch(`${base}/v1/events`, {
        method: 'POST',
        headers: { authorization: `Bearer ${env!.vars.FANFARE_INGEST_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ events }),
      })
      expect(res.status).toBe(202)
    }
    const updates = () => watcher.of(channel).filter((f) => f.op === 'update')
    const subjectsOf = async () => Object.keys((await jsm.streams.info(t.changeStreams.leaderboard, { subjects_filter: '>' })).state.subjects ?? {})
    for (let i = 0; i < 5; i++) await post(4)
    await until('20 updates before the switch', () => updates().length === 20)
    // One message per run, on the channel's own subject.
    expect((await subjectsOf()).some((s) => s.includes('._batch.'))).toBe(false)
    const beforeSwitch = updates()[updates().length - 1]

    // The upgrade command without the flag says the deployment is not switched, and switches nothing.
    const plain = await runUntilExit('core/db/migrate-cli.ts', env.vars, 60_000)
    expect(plain.code, plain.output).toBe(0)
    expect(plain.output).toContain('one message per channel run')
    expect(await changeFormatRecorded(jsm, env.config)).toBe('runs')

    // An API node of the older version follows the change streams (a consumer without the feed's
    // description): the switch is refused, naming it, and nothing changes.
    const inbox = createInbox()
    const follower = nc.subscribe(inbox)
    const older = await jsm.consumers.add(t.changeStreams.leaderboard, { deliver_subject: inbox, ack_policy: AckPolicy.None })
    const refused = await runUntilExit('core/db/migrate-cli.ts', env.vars, 60_000, ['--live-batches'])
    expect(refused.code, refused.output).toBe(1)
    expect(refused.output).toContain('not switched to compressed live batches')
    expect(refused.output).toContain(older.name)
    expect(await changeFormatRecorded(jsm, env.config)).toBe('runs')

    // Replaced (upgraded): the switch goes through.
    follower.unsubscribe()
    await jsm.consumers.delete(t.changeStreams.leaderboard, older.name)
    const switched = await runUntilExit('core/db/migrate-cli.ts', env.vars, 60_000, ['--live-batches'])
    expect(switched.code, switched.output).toBe(0)
    expect(switched.output).toContain('compressed live batches recorded on')
    expect(await changeFormatRecorded(jsm, env.config)).toBe('compressed')

    // The running worker takes it up (it reads the streams every 5 s): events keep coming meanwhile.
    await until(
      'a live batch in the change stream',
      async () => {
        await post(2)
        return (await subjectsOf()).some((s) => s.startsWith(`${prefix}.changes.leaderboard._batch.`))
      },
      30_000,
      500,
    )
    for (let i = 0; i < 5; i++) await post(4)
    // A batch long enough goes out compressed (one post of 60: a run of up to 60 changes per partition).
    await post(60)
    await until('every update', () => updates().length === sent)
    const batchData = await Promise.all(
      (await subjectsOf()).filter((s) => s.includes('._batch.')).map(async (s) => (await jsm.streams.getMessage(t.changeStreams.leaderboard, { last_by_subj: s }))!.data),
    )
    expect(batchData.some((d) => ZSTD_MAGIC.every((b, i) => d[i] === b))).toBe(true)
    for (const d of batchData) expect(runsOfData(d).every((r) => r.channel === channel)).toBe(true)
    // Every version once, in order, and no resync: nothing was lost across the switch.
    const first = watcher.of(channel)[0].version
    const last = first + sent
    expect(updates().map((f) => f.version)).toEqual(Array.from({ length: sent }, (_, i) => first + 1 + i))
    expect(watcher.frames.filter((f) => f.resync)).toEqual([])
    const board = await (await fetch(`${base}/v1/leaderboards/switch?limit=100`)).json()
    expect(board.entries.reduce((n: number, e: { score: number }) => n + e.score, 0)).toBe(sent)

    // A resume from before the switch: the missed updates, contiguous, or a resync snapshot.
    const early = await WsClient.open(`ws://127.0.0.1:${port}/v1/ws`)
    clients.push(early)
    early.send({ op: 'subscribe', ref: 'e', channel, since: beforeSwitch.version - 1, epoch: beforeSwitch.epoch })
        await until('the early resume caught up', () => early.of(channel).some((f) => f.version === last))
    const got = early.of(channel)
    if (got[0].op === 'snapshot') expect(got[0].resync).toBe(true)
    else expect(got.map((f) => f.version)).toEqual(Array.from({ length: last - beforeSwitch.version + 1 }, (_, i) => beforeSwitch.version + i))
    console.log(`switch: resume from before it got ${got[0].op === 'snapshot' ? 'a resync snapshot' : `${got.length} missed updates`}`)

    // A resume from after it: served from Postgres history (change_history), no snapshot.
    const late = await WsClient.open(`ws://127.0.0.1:${port}/v1/ws`)
    clients.push(late)
    late.send({ op: 'subscribe', ref: 'l', channel, since: last - 3, epoch: beforeSwitch.epoch })
    await until('the late resume caught up', () => late.of(channel).some((f) => f.version === last))
    expect(late.frames.find((f) => f.op === 'subscribed' && f.channel === channel)).toMatchObject({ version: last - 3, recovered: true })
    expect(late.of(channel).map((f) => `${f.op}:${f.version}`)).toEqual([`update:${last - 2}`, `update:${last - 1}`, `update:${last}`])

    // A later upgrade (which rewrites every stream's settings) keeps the record.
    const again = await runUntilExit('core/db/migrate-cli.ts', env.vars, 60_000)
    expect(again.code, again.output).toBe(0)
    expect(again.output).not.toContain('one message per channel run')
    expect(again.output).not.toContain('not compressed')
    expect(await changeFormatRecorded(jsm, env.config)).toBe('compressed')
  }, 120_000)

  test('from the last version (live batches, not compressed): refused while one of its API nodes follows, then recorded, other records kept', async () => {
    const env2 = await createTestEnv({ FANFARE_PARTITIONS: '2' })
    const nc2 = await connectNats(env2.vars.NATS_URL, 'switch-test-2')
    try {
      const jsm = await jetstreamManager(nc2)
      const stream = topology(env2.config).changeStreams.chat
      await ensureStreams(nc2, env2.config, { changes: 'batches' })
      expect(await changeFormatRecorded(jsm, env2.config)).toBe('batches')
      const before = (await jsm.streams.info(stream)).config.description
      // The last version's change feed: it reads live batches, not compressed ones.
      const last = await jsm.consumers.add(stream, { deliver_subject: createInbox(), ack_policy: AckPolicy.None, description: 'fanfare change feed; takes live batches' })
      const current = await jsm.consumers.add(stream, { deliver_subject: createInbox(), ack_policy: AckPolicy.None, description: FEED_CONSUMER_DESCRIPTION })
      const refused = await recordChangeFormat(nc2, env2.config, { settleMs: 0 }).catch((err: unknown) => err)
      expect(refused).toBeInstanceOf(OlderNodesFollowing)
      expect((refused as OlderNodesFollowing).consumers).toEqual([`${stream}/${last.name}`])
      expect(await changeFormatRecorded(jsm, env2.config)).toBe('batches')
      await jsm.consumers.delete(stream, last.name)
      expect((await recordChangeFormat(nc2, env2.config, { settleMs: 0 })).length).toBeGreaterThan(0)
      expect(await changeFormatRecorded(jsm, env2.config)).toBe('compressed')
      // The stream's other records (its incarnation, the partition count) are as they were, the format added once.
      const after = (await jsm.streams.info(stream)).config.description!
      expect(after).toBe(`${before}; batches=zstd`)
      expect(await recordChangeFormat(nc2, env2.config, { settleMs: 0 })).toEqual([])
      await jsm.consumers.delete(stream, current.name)
    } finally {
      await nc2.close()
      await env2.cleanup()
    }
  })

  test('a rollback after the switch: while an API node of the last version follows, workers publish what it reads, and compress again once it left', async () => {
    const env3 = await createTestEnv({ FANFARE_PARTITIONS: '2' })
    const nc3 = await connectNats(env3.vars.NATS_URL, 'switch-test-3')
    const own: Proc[] = []
    try {
      const jsm = await jetstreamManager(nc3)
      const t = topology(env3.config)
      const stream = t.changeStreams.leaderboard
      const prefix = env3.config.FANFARE_SUBJECT_PREFIX
      await ensureStreams(nc3, env3.config)
      expect(await changeFormatRecorded(jsm, env3.config)).toBe('compressed')
      // An API node of the last version (live batches, not compressed) follows the change streams
      // from the start, e.g. rolled back to after the switch: everything delivered to it must be
      // something it reads (JSON), from the worker's first batch on.
      const inbox = createInbox()
      const delivered: Uint8Array[] = []
      const sub = nc3.subscribe(inbox, { callback: (_err, m) => void (m.data.length > 0 && delivered.push(m.data)) })
      const older = await jsm.consumers.add(stream, { deliver_subject: inbox, ack_policy: AckPolicy.None, description: 'fanfare change feed; takes live batches' })
      const port = freePort()
      own.push(spawnProc('worker', 'stream-workers/src/main.ts', env3.vars))
      own.push(spawnProc('api', 'api/src/main.ts', { ...env3.vars, PORT: String(port), HOST: '127.0.0.1' }))
      const base = `http://127.0.0.1:${port}`
      await waitReady(base, own)
      const admin = { authorization: `Bearer ${env3.vars.FANFARE_ADMIN_TOKEN}`, 'content-type': 'application/json' }
      expect((await fetch(`${base}/admin/leaderboards/rollback`, { method: 'PUT', headers: admin, body: JSON.stringify({ operator: 'sum' }) })).status).toBe(200)
      let sent = 0
      // 60 scores in one post: runs of up to 60 changes per partition, long enough to be compressed.
      const post60 = async () => {
        const events = Array.from({ length: 60 }, () => ({ type: 'score.submitted', data: { board: 'rollback', player: `p${sent++ % 50}`, score: 1 } }))
        const res = await fetch(`${base}/v1/events`, { method: 'POST', headers: { authorization: `Bearer ${env3.vars.FANFARE_INGEST_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ events }) })
        expect(res.status).toBe(202)
      }
      const compressed = (d: Uint8Array) => ZSTD_MAGIC.every((b, i) => d[i] === b)
      const changesIn = (data: Uint8Array[]) => data.flatMap((d) => runsOfData(d)).reduce((n, r) => n + r.changes.length, 0)
      for (let i = 0; i < 3; i++) await post60()
      await until('every change delivered to the older node', () => changesIn(delivered) === sent, 30_000)
      expect(delivered.filter(compressed)).toEqual([])
      // Big enough that this version would have compressed them.
      expect(delivered.some((d) => d.length >= 1024)).toBe(true)
      for (const d of delivered) JSON.parse(new TextDecoder().decode(d))

      // It leaves (replaced by a node of this version): within the watch interval, batches are compressed again.
      sub.unsubscribe()
      await jsm.consumers.delete(stream, older.name)
      const lastCompressed = async () =>
        Promise.all(
          Object.keys((await jsm.streams.info(stream, { subjects_filter: `${prefix}.changes.leaderboard._batch.>` })).state.subjects ?? {}).map(
            async (s) => compressed((await jsm.streams.getMessage(stream, { last_by_subj: s }))!.data),
          ),
        )
      await until(
        'a compressed batch once the older node left',
        async () => {
          await post60()
          return (await lastCompressed()).some(Boolean)
        },
        30_000,
        500,
      )
      // Every score counted once (the last post may still be applying).
      const total = async () => ((await (await fetch(`${base}/v1/leaderboards/rollback?limit=100`)).json()) as { entries: { score: number }[] }).entries.reduce((n, e) => n + e.score, 0)
      await until('every score on the board', async () => (await total()) >= sent, 30_000)
      await Bun.sleep(200)
      expect(await total()).toBe(sent)
    } finally {
      await Promise.all(own.map((p) => p.stop()))
      await nc3.close()
      await env3.cleanup()
    }
  }, 120_000)
})
