import { describe, expect, test } from 'bun:test'
import { TimeoutError } from '@nats-io/transport-node'
import { JetStreamApiError } from '@nats-io/jetstream'
import { JetStreamNotAnswering, untilJetStreamAnswers } from './nats'
import { StartFailure } from './start-failure'

// untilJetStreamAnswers: what a process's start does while a NATS cluster elects (the waits on
// real servers are in test/cluster/nats-cluster.int.test.ts).
describe('untilJetStreamAnswers', () => {
  const url = 'nats://fanfare:secret@nats-1:4222,nats://nats-2:4222'

  test('runs the steps again after a timeout or "temporarily unavailable", warning each time', async () => {
    const warnings: string[] = []
    const failures = [new TimeoutError(), new JetStreamApiError({ code: 503, err_code: 10008, description: 'JetStream system temporarily unavailable' })]
    let calls = 0
    const result = await untilJetStreamAnswers(
      async () => {
        calls++
        const failure = failures.shift()
        if (failure) throw failure
        return 'started'
      },
      { url, warn: (m) => warnings.push(m), waitMs: 10_000 },
    )
    expect(result).toBe('started')
    expect(calls).toBe(3)
    expect(warnings).toHaveLength(2)
    expect(warnings[0]).toStartWith('JetStream did not answer in time (timeout:')
    expect(warnings[1]).toContain('temporarily unavailable')
  })

  test('other errors are thrown at once', async () => {
    let calls = 0
    const err = await untilJetStreamAnswers(
      async () => {
        calls++
        throw new Error('stream name already in use with a different configuration')
      },
      { url, warn: () => {} },
    ).then(() => undefined, (e: Error) => e)
    expect(err?.message).toContain('already in use')
    expect(calls).toBe(1)
  })

  test('past the wait: a StartFailure naming NATS_URL\'s servers, never the login', async () => {
    const err = await untilJetStreamAnswers(() => Promise.reject(new TimeoutError()), { url, warn: () => {}, waitMs: 0 }).then(() => undefined, (e: Error) => e)
    expect(err).toBeInstanceOf(JetStreamNotAnswering)
    expect(err).toBeInstanceOf(StartFailure)
    expect(err?.message).toContain('(nats://nats-1:4222, nats://nats-2:4222) did not answer for 0 s')
    expect(err?.message).not.toContain('secret')
  })
})
