import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { MAX_REPLAY } from '../../api/src/realtime/channel-hub'
import { until, WsClient } from '../e2e/harness'
import { startDeployment, type Deployment } from '../sdk/deployment'

/**
 * Field notes, complaint 3: "a recovered flag that lies, or no way to tell history was exceeded".
 * A real API node and worker, a room with more changes than a resume replays (MAX_REPLAY): a
 * resume exactly MAX_REPLAY behind is recovered, with every missed update and nothing else; one
 * more behind is told so with a resync snapshot, never given a partial replay.
 */
describe('resume at the replay cap', () => {
  let d: Deployment
  const opened: WsClient[] = []
  beforeAll(async () => {
    d = await startDeployment({ apis: 1, workers: 1 })
  }, 60_000)
  afterAll(async () => {
    for (const c of opened) c.close()
    await d?.stop()
  })

  test(`a resume ${MAX_REPLAY} behind replays all of them; ${MAX_REPLAY + 1} behind is a resync, not a part`, async () => {
    const room = `cap_${Math.random().toString(36).slice(2, 8)}`
    const channel = `chat:${room}`
    const total = MAX_REPLAY + 50
    for (let n = 0; n < total; n += 500) {
      const events = Array.from({ length: Math.min(500, total - n) }, (_, k) => ({ type: 'chat.message.posted', data: { room, user: 'u', text: `t${n + k}` } }))
      expect((await d.call('POST', '/v1/events', { events })).status).toBe(202)
    }
    const ws = `${d.urls[0].replace('http', 'ws')}/v1/ws`
    const watcher = await WsClient.open(ws)
    opened.push(watcher)
    watcher.send({ op: 'subscribe', channel })
    const { version, epoch } = await until(
      'every message applied',
      () => {
        const last = watcher.of(channel).at(-1)
        return last && last.version >= total ? last : undefined
      },
      60_000,
    )
    expect(version).toBe(total)

    const resume = async (since: number) => {
      const c = await WsClient.open(ws)
      opened.push(c)
      c.send({ op: 'subscribe', ref: 'r', channel, since, epoch })
      return c
    }
    const edge = await resume(version - MAX_REPLAY)
    await until('replayed', () => edge.frames.filter((f) => f.op === 'update').length === MAX_REPLAY, 30_000)
    const own = edge.frames.filter((f) => f.channel === channel)
    expect(own[0]).toMatchObject({ op: 'subscribed', version: version - MAX_REPLAY, epoch, recovered: true })
    expect(own.slice(1).map((f) => f.version)).toEqual(Array.from({ length: MAX_REPLAY }, (_, i) => version - MAX_REPLAY + 1 + i))
    expect(own.slice(1).map((f) => f.data.message.text)).toEqual(Array.from({ length: MAX_REPLAY }, (_, i) => `t${total - MAX_REPLAY + i}`))

    const past = await resume(version - MAX_REPLAY - 1)
    await until('answered', () => past.of(channel).length > 0 || past.frames.some((f) => f.op === 'subscribed'), 30_000)
    await Bun.sleep(300)
    const answer = past.frames.filter((f) => f.channel === channel)
    expect(answer.length).toBe(1)
    expect(answer[0]).toMatchObject({ op: 'snapshot', version, epoch, resync: true })
  }, 120_000)
})
