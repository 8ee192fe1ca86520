import { afterAll, describe, expect, test } from 'bun:test'
import { until, WsClient, type Proc } from '../e2e/harness'
import { BoardView, configureBoard, diff, postEvents, privateNatsDeployment, readModel, scoreEvent, startNodes, stopCleanly, untilVersionSettles, type PrivateNatsDeployment } from './support'

const CLIENTS = 5
const PLAYERS = 20

/**
 * A routine NATS restart while scores flow: the API node's change feed must follow again after
 * the restart, and say it is not ready while its connection is down (past the few seconds a
 * reconnect is given). Every subscriber ends with exactly the read model's board and version, in
 * order, with no silent gap (a resync snapshot is allowed).
 */
describe('NATS restart with subscribers', () => {
  let d: PrivateNatsDeployment | undefined
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await d?.close()
  })

  test('every subscriber follows the board again after NATS restarts', async () => {
    d = await privateNatsDeployment('nats-restart-subs', { FANFARE_PARTITIONS: '4', FANFARE_LEASE_TTL_MS: '2000', LOG_LEVEL: 'info' })
    const { nats, env, api, port } = d
    const { apiProc } = await startNodes(d, procs)
    const run = Math.random().toString(36).slice(2, 8)
    const board = `nr_${run}`
    const channel = `leaderboard:${board}`
    await configureBoard(api, board, 'latest')

    const views: BoardView[] = []
    for (let i = 0; i < CLIENTS; i++) {
      const client = await WsClient.open(`ws://127.0.0.1:${port}/v1/ws`)
      client.send({ op: 'subscribe', ref: 's', channel })
      views.push(new BoardView(client))
    }
    await until('every client has its snapshot', () => views.every((v) => v.client.of(channel).length > 0))

    // Scores every ~60 ms, 20 per request; requests refused during the outage are not resent
    // (the read model is the truth the subscribers are compared with).
    let n = 0
    let sending = true
    const sender = (async () => {
      while (sending) {
        const batch = Array.from({ length: PLAYERS }, (_, p) => scoreEvent(`${run}-${n}-${p}`, board, `p${p}`, n * 100 + p))
        n++
        await postEvents(api, batch, 10_000)
        await Bun.sleep(60)
      }
    })()

    await until('updates flowing', () => views.every((v) => v.catchUp(channel).version >= 100), 20_000)
    await nats.stop()
    // The node's own connection is down: not ready once it has been reconnecting for over 3 s
    // (RECONNECT_GRACE_MS; a server of a cluster dying moves it to another within a second).
    const stoppedAt = Date.now()
    const readyDuringOutage = await until('the node not ready during the outage', async () => {
      const res = await fetch(`${api.baseUrl}/readyz`)
      return res.status === 503 ? res.status : undefined
    }, 10_000, 200).catch(() => 200)
    await Bun.sleep(Math.max(0, stoppedAt + 2000 - Date.now()))
    await nats.start()
    await Bun.sleep(6000)
    sending = false
    await sender

    const rm = readModel(env.vars.DATABASE_URL)
    try {
      // The read model settles (the worker applies what was stored), then every subscriber must
      // hold exactly it: same version, same board.
      const version = await untilVersionSettles(rm, channel, 30_000)
      const truth = await rm.scores(board)
      await until(
        `every subscriber at version ${version}`,
        () => views.every((v) => v.catchUp(channel).version === version),
        20_000,
      ).catch((err) => {
        const at = views.map((v) => `${v.version} (closed: ${JSON.stringify(v.client.closed)})`).join(', ')
        throw new Error(`${(err as Error).message}; subscribers at ${at}\napi log tail:\n${apiProc.output().slice(-3000)}`)
      })
      for (const v of views) expect(diff(v.board, truth)).toEqual([])
      expect(readyDuringOutage).toBe(503)
      const ready = await fetch(`${api.baseUrl}/readyz`)
      expect(ready.status).toBe(200)
    } finally {
      await rm.close()
    }
    for (const v of views) v.client.close()
    await stopCleanly(...procs)
  }, 120_000)
})
