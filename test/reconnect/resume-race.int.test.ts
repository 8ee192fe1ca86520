import { afterAll, describe, expect, test } from 'bun:test'
import { startTestNode, type TestNode } from '../../api/src/test-support'
import type { HistoryReader } from '../../api/src/realtime/history'
import { startTestWorker } from '../../stream-workers/src/testing/harness'
import type { Workers } from '../../stream-workers/src/workers'
import { until, WsClient } from '../e2e/harness'
import { apiAt, BoardView, postEvents, readModel, scoreEvent, type ReadModel } from '../cluster/support'

/** How many versions the watcher must get while the resume's history read is held, before it reads and again after. */
const HOLD_VERSIONS = 5
/** The channel changes once every this many ms, all through the test. */
const EVERY_MS = 20

/**
 * Live updates arriving while a resume reads its history (field notes: "live publications during
 * a history read are merged without duplicates"). A node reads history and receives live notices
 * on its one NATS connection, so a proxy cannot hold the one and let the other through: the node's
 * history reader is wrapped (startTestNode's `wrapHistory`) so that the resume's read waits
 * until HOLD_VERSIONS live updates were delivered, reads, and waits for as many newer ones,
 * while a worker commits a change every EVERY_MS. The
 * first wait puts live updates into both the history read and the resume's buffer (they must not
 * repeat); the second delivers updates newer than the history read (they must follow it, not come
 * live before it nor go missing).
 *
 * The resumed client must get `subscribed` at its version, then every version after it exactly
 * once and in order, the same updates a watcher on the node got; no resync: the history keeps
 * every version it missed, so a resync here would mean the node lost the updates of the read.
 * Fails on a hub copy that joins the resumer to the topic at once (live updates come before
 * `subscribed`), that drops the buffer's duplicates of the history no more (repeats), or that does
 * not buffer for a resume (a resync).
 */
describe('resuming while the channel changes', () => {
  let node: TestNode | undefined
  let worker: Workers | undefined
  let rm: ReadModel | undefined
  const clients: WsClient[] = []
  afterAll(async () => {
    for (const c of clients) c.close()
    await worker?.stop().catch(() => {})
    await rm?.close()
    await node?.close()
  })

  test('live updates during the history read follow the replay, each once and in order', async () => {
    const board = `resume_${Math.random().toString(36).slice(2, 8)}`
    const channel = `leaderboard:${board}`
    let watching: BoardView | undefined
    /** The watcher's version now: what the node has delivered (give or take the frames in flight). */
    const delivered = () => watching!.catchUp(channel).version
    let slow = false
    const reads: { atStart: number; atRead: number; newest: number; atEnd: number }[] = []
    const wrapHistory = (read: HistoryReader): HistoryReader => async (ch, after) => {
      if (!slow || ch !== channel) return read(ch, after)
      // Held until live updates did arrive meanwhile (not for a fixed time: a worker stalled by a
      // loaded machine would deliver none within it).
      const atStart = delivered()
      await until('live updates while the read waits to start', () => delivered() >= atStart + HOLD_VERSIONS, 15_000)
      const atRead = delivered()
      const notices = await read(ch, after)
      const newest = Math.max(...notices.map((n) => n.version))
      await until('live updates newer than the read', () => delivered() >= newest + HOLD_VERSIONS, 15_000)
      reads.push({ atStart, atRead, newest, atEnd: delivered() })
      return notices
    }
    node = await startTestNode({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '1500' }, { wrapHistory })
    worker = await startTestWorker(node.env)
    rm = readModel(node.env.vars.DATABASE_URL)
    const api = apiAt(Number(new URL(node.base).port), node.env.vars)

    const watcher = await WsClient.open(node.wsUrl)
    clients.push(watcher)
    watcher.send({ op: 'subscribe', channel })
    await until('the watcher snapshot', () => watcher.of(channel).length > 0)
    watching = new BoardView(watcher)

    // One score per request (one change each), at a steady rate, until told to stop.
    let sending = true
    let n = 0
    const sender = (async () => {
      while (sending) {
        const res = await postEvents(api, [scoreEvent(`${board}-${n}`, board, `p${n % 7}`, n)])
        if (res.status !== 202) throw new Error(`POST /v1/events: ${res.status} ${JSON.stringify(res.body)}`)
        n++
        await Bun.sleep(EVERY_MS)
      }
    })()

    await until('the channel at version 30', () => delivered() >= 30, 20_000)
    const since = 10
    const { epoch } = watcher.of(channel).find((f) => f.version === since)
    const resumer = await WsClient.open(node.wsUrl)
    clients.push(resumer)
    slow = true
    resumer.send({ op: 'subscribe', ref: 'r', channel, since, epoch })
    // The channel goes on changing until the resume read its history and was answered, and a little after.
    await until('the resume answered', () => reads.length > 0 && resumer.frames.some((f) => f.channel === channel), 40_000)
    await Bun.sleep(500)
    sending = false
    await sender

    let final = -1
    await until('every score applied', async () => (final = await rm!.version(channel)) === n, 20_000, 100)
    await until(`the watcher and the resumer at version ${final}`, () => delivered() === final && resumer.frames.at(-1)?.version === final, 10_000)

    // The race happened both ways: updates delivered while the read waited to start are in it (and
    // buffered for the resume), and updates delivered after it read are newer than it.
    const [r] = reads
    expect(r.atRead).toBeGreaterThan(r.atStart)
    expect(r.newest).toBeGreaterThanOrEqual(r.atRead)
    expect(r.atEnd).toBeGreaterThan(r.newest)

    const own = resumer.frames.filter((f) => f.channel === channel)
    expect(own[0]).toMatchObject({ op: 'subscribed', version: since, epoch, recovered: true })
    expect(own.slice(1).map((f) => `${f.op}:${f.version}`)).toEqual(Array.from({ length: final - since }, (_, i) => `update:${since + 1 + i}`))
    expect(own.slice(1)).toEqual(watcher.of(channel).filter((f) => f.op === 'update' && f.version > since))
    expect(watching.board).toEqual(await rm!.scores(board))
  }, 90_000)
})
