import { describe, expect, test } from 'bun:test'
import type { FeedStatus } from '../../realtime/change-feed'
import { createReadiness, type Checked } from './service'

const fine: Checked = { postgres: true, nats: 'ok' }
const following: FeedStatus = { stream: 'S_CHANGES_LEADERBOARD', following: true, lastSeq: 5 }
const t0 = Date.parse('2026-11-30T10:00:00Z')

/** A judge that has answered ready once (at t0 - 1 s). */
function readyOnce(graceMs = 30_000) {
  const judge = createReadiness({ graceMs, reconnectGraceMs: 3000 })
  expect(judge(fine, [following], [], t0 - 1000).status).toBe('ready')
  return judge
}

describe('readiness over time', () => {
  test('a JetStream outage (stream info, change feeds) is degraded within the grace, not ready after it, ready when it answers', () => {
    const judge = readyOnce()
    const out: Checked = { postgres: true, nats: 'ok', jetstreamError: 'no answer within 2000 ms' }
    const lost: FeedStatus = { stream: 'S_CHANGES_LEADERBOARD', following: false, lastSeq: 5, reason: 'missed heartbeats', since: new Date(t0 - 2000).toISOString() }
    const v = judge(out, [lost], [], t0)
    expect(v).toEqual({
      status: 'degraded',
      body: {
        status: 'degraded',
        postgres: true,
        nats: true,
        jetstream: false,
        changeFeeds: false,
        notFollowing: [{ stream: lost.stream, reason: 'missed heartbeats', since: lost.since }],
        // Since the feed stopped following, not since this check saw it.
        degraded: {
          since: new Date(t0 - 2000).toISOString(),
          notReadyAt: new Date(t0 + 28_000).toISOString(),
          notAnswering: ["JetStream: the event stream's info (no answer within 2000 ms)", 'change feed S_CHANGES_LEADERBOARD: missed heartbeats'],
        },
      },
    })
    expect(judge(out, [lost], [], t0 + 27_000).status).toBe('degraded')
    const after = judge(out, [lost], [], t0 + 28_000)
    expect(after.status).toBe('not_ready')
    if (after.status === 'not_ready') {
      expect(after.message).toContain('JetStream has not answered for 30 s')
      expect(after.details).toMatchObject({ jetstream: false, changeFeeds: false, degradedSince: new Date(t0 - 2000).toISOString() })
    }
    expect(judge(fine, [following], [], t0 + 29_000).status).toBe('ready')
    // A new outage gets a whole grace again.
    expect(judge(out, [following], [], t0 + 40_000).status).toBe('degraded')
    expect(judge(out, [following], [], t0 + 69_999).status).toBe('degraded')
    expect(judge(out, [following], [], t0 + 70_000).status).toBe('not_ready')
  })

  test("this node's own faults are not ready at once: Postgres, the replica, a closed or silent connection, a denied subscription, a feed refused by permissions", () => {
    const cases: [Checked, FeedStatus[], { subject: string; name: string; since: string }[]][] = [
      [{ ...fine, postgres: false }, [following], []],
      [{ ...fine, postgresRead: false }, [following], []],
      [{ postgres: true, nats: 'closed' }, [following], []],
      [{ postgres: true, nats: 'silent' }, [following], []],
      [fine, [following], [{ subject: 't.control.>', name: 'revocations', since: new Date(t0).toISOString() }]],
      [fine, [{ ...following, following: false, reason: 'cannot follow: Permissions Violation for Publish to "$JS.API.CONSUMER.CREATE.S"' }], []],
    ]
    for (const [checked, feeds, denied] of cases) expect(readyOnce()(checked, feeds, denied, t0).status).toBe('not_ready')
  })

  test('a reconnecting connection is degraded for the reconnect grace only; its feeds and stream are the connection\'s fault then', () => {
    const judge = readyOnce()
    const down: Checked = { postgres: true, nats: 'disconnected' }
    const lost: FeedStatus = { ...following, following: false, reason: 'nats disconnected', since: new Date(t0).toISOString() }
    const v = judge(down, [lost], [], t0)
    expect(v.status).toBe('degraded')
    if (v.status === 'degraded') expect(v.body.degraded).toEqual({ since: new Date(t0).toISOString(), notReadyAt: new Date(t0 + 3000).toISOString(), notAnswering: ['the NATS connection is down (reconnecting)'] })
    expect(judge(down, [lost], [], t0 + 2999).status).toBe('degraded')
    expect(judge(down, [lost], [], t0 + 3000).status).toBe('not_ready')
    // Reconnected, the feed follows again a moment later: degraded (JetStream's part) until it does.
    expect(judge(fine, [{ ...lost, reason: 'nats reconnected' }], [], t0 + 3500).status).toBe('degraded')
    expect(judge(fine, [following], [], t0 + 4000).status).toBe('ready')
  })

  test('a node that has never been ready gets no grace', () => {
    const judge = createReadiness({ graceMs: 30_000, reconnectGraceMs: 3000 })
    expect(judge({ ...fine, jetstreamError: 'timeout' }, [following], [], t0).status).toBe('not_ready')
    expect(judge({ postgres: true, nats: 'disconnected' }, [], [], t0).status).toBe('not_ready')
  })

  test('a grace of 0 is not ready at once, as before', () => {
    expect(readyOnce(0)({ ...fine, jetstreamError: 'timeout' }, [following], [], t0).status).toBe('not_ready')
  })
})
