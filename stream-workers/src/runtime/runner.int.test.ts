import { afterEach, describe, expect, test } from 'bun:test'
import { jetstreamManager } from '@nats-io/jetstream'
import { nanos } from '@nats-io/transport-node'
import { leaderboards } from '../../../core/db/schema'
import { parseConsumerName } from '../../../core/projections'
import { until } from '../../../core/testing/wait'
import { boardScores, caughtUp, createWorld, publishEvent, storedEvent, type World } from '../testing/harness'

let world: World | undefined
afterEach(async () => {
  await world?.close()
  world = undefined
})

/** The name of the leaderboards consumer of partition 0, once its runner made it. */
const leaderboardsConsumer = async (w: World) => {
  const jsm = await jetstreamManager(w.nc)
  return until('the leaderboards consumer', async () => {
    for await (const info of jsm.consumers.list(w.config.FANFARE_STREAM)) {
      const parsed = info && parseConsumerName(info.name)
      if (parsed && parsed.projection === 'leaderboards' && parsed.partition === 0) return info.name
    }
    return undefined
  })
}

describe('runner deliveries', () => {
  // A runner that holds deliveries beyond its batch (a pull kept open across batches was tried:
  // bench/findings.md, 2026-11-29) must not apply them twice when the server sends them again.
  test('deliveries sent again after a batch outlasts the ack wait are applied once', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: '1' }))
    // Sums: an event applied twice would show.
    await w.database.db.insert(leaderboards).values({ board: 'tot', sortOrder: 'desc', operator: 'sum', hasScores: true })
    let held = false
    let release!: () => void
    const released = new Promise<void>((ok) => (release = ok))
    await w.startWorker({
      hooks: {
        // The first leaderboards batch waits here, committed and not acked, past the ack wait.
        onBeforeAck: async ({ projection }) => {
          if (projection !== 'leaderboards' || held) return
          held = true
          await released
        },
      },
    })
    const name = await leaderboardsConsumer(w)
    // A short ack wait (the runner's is 30 s): what is not acked is delivered again soon.
    const jsm = await jetstreamManager(w.nc)
    const info = await jsm.consumers.info(w.config.FANFARE_STREAM, name)
    await jsm.consumers.update(w.config.FANFARE_STREAM, name, { ...info.config, ack_wait: nanos(300) })
    const expected: Record<string, number> = {}
    const send = async (player: string, score: number) => {
      expected[player] = (expected[player] ?? 0) + score
      await publishEvent(w, storedEvent('score.submitted', { board: 'tot', player, score }))
    }
    await send('a', 1)
    await until('the first batch held', async () => held || undefined)
    // Stored while the batch is held: delivered (with a runner that holds deliveries), then again after the ack wait.
    for (let i = 0; i < 5; i++) await send(`p${i % 2}`, 10 + i)
    await Bun.sleep(1_500)
    release()
    await caughtUp(w)
    expect(await boardScores(w, 'tot')).toEqual(expected)
  })
})
