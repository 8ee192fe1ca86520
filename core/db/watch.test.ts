import { expect, test } from 'bun:test'
import { createLogger } from '../logger'
import { until } from '../testing/wait'
import { NotAnswering } from './client'
import { watchDatabase } from './watch'

/** A database whose pings answer as `next` says, counting its drops; and the watch's log lines. */
function watched() {
  const state = { next: 'answer' as 'answer' | 'silent' | 'refused' | 'connect timeout', pings: 0, drops: 0 }
  const lines: { msg: string }[] = []
  const logger = createLogger('info', {}, { output: { write: (l: string) => lines.push(JSON.parse(l)) } })
  const watch = watchDatabase({
    database: {
      ping: async (timeoutMs) => {
        state.pings++
        if (state.next === 'silent') throw new NotAnswering(timeoutMs)
        if (state.next === 'connect timeout') throw Object.assign(new Error('Connection timeout after 5s'), { code: 'ERR_POSTGRES_CONNECTION_TIMEOUT' })
        if (state.next === 'refused') throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })
      },
      dropConnections: () => void state.drops++,
    },
    timeoutMs: 5000,
    logger,
    everyMs: 5,
  })
  /** Waits for `n` more pings. */
  const pings = (n: number) => {
    const target = state.pings + n
    return until(`${n} pings`, () => state.pings >= target, 2000, 2)
  }
  return { state, lines, watch, pings }
}

test('an unanswered ping drops the connections once, however long Postgres stays silent; an answer is logged and arms it again', async () => {
  const { state, lines, watch, pings } = watched()
  await pings(3)
  expect(watch.answering()).toBe(true)
  expect(state.drops).toBe(0)

  state.next = 'silent'
  await pings(3)
  // A connection that cannot be opened within the timeout is no answer either.
  state.next = 'connect timeout'
  await pings(3)
  expect(watch.answering()).toBe(false)
  expect(state.drops).toBe(1)

  state.next = 'answer'
  await pings(2)
  expect(watch.answering()).toBe(true)
  state.next = 'silent'
  await pings(2)
  expect(state.drops).toBe(2)
  await watch.stop()
  expect(lines.map((l) => l.msg.split(' (')[0])).toEqual(['Postgres does not answer', 'Postgres answers again', 'Postgres does not answer'])
})

test('a refused ping is an answer: nothing is dropped', async () => {
  const { state, watch, pings } = watched()
  state.next = 'refused'
  await pings(5)
  expect(watch.answering()).toBe(true)
  expect(state.drops).toBe(0)
  await watch.stop()
})
