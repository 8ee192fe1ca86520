import { describe, expect, test } from 'bun:test'
import type { ChangeNotice } from '../../../core/channels'
import { createChannelHub, type Sink, type Snapshot } from './channel-hub'

/** A tiny stand-in for Bun's topics: the hub's only I/O besides reading snapshots. */
function topics() {
  const members = new Map<string, Set<FakeSink>>()
  return {
    publish: (topic: string, text: string) => {
      for (const s of members.get(topic) ?? []) s.frames.push(JSON.parse(text))
    },
    sink(id: string): FakeSink {
      const s: FakeSink = {
        id,
        frames: [],
        overflowed: false,
        send: (text) => (s.frames.push(JSON.parse(text)), text.length),
        subscribe: (t) => (members.get(t) ?? members.set(t, new Set()).get(t)!).add(s),
        unsubscribe: (t) => void members.get(t)?.delete(s),
        overflow: () => void (s.overflowed = true),
      }
      return s
    },
  }
}
type FakeSink = Sink & { frames: any[]; overflowed: boolean }

const notice = (version: number, channel = 'chat:lobby', epoch = 'e1'): ChangeNotice => ({
  channel,
  version,
  epoch,
  data: { kind: 'deleted', messageId: `m${version}` },
  at: '',
})

/** Snapshot reads that the test resolves by hand, to place notices during a read. */
function manualSnapshots() {
  const waiting: ((s: Snapshot) => void)[] = []
  return {
    read: () => new Promise<Snapshot>((resolve) => waiting.push(resolve)),
    resolveNext: async (version: number, epoch = 'e1') => {
      for (let i = 0; i < 50 && waiting.length === 0; i++) await Bun.sleep(1)
      waiting.shift()!({ version, epoch, data: { v: version } })
      await Bun.sleep(1)
    },
    pending: () => waiting.length,
  }
}

const versionsSeen = (s: FakeSink) => s.frames.map((f) => `${f.op}:${f.version}${f.resync ? ':resync' : ''}`)

describe('channel hub', () => {
  test('snapshot, then each update once, in order', async () => {
    const t = topics()
    const hub = createChannelHub({ snapshot: async () => ({ version: 3, epoch: 'e1', data: {} }), publish: t.publish, gapTimeoutMs: 1000 })
    const a = t.sink('a')
    await hub.subscribe(a, 'chat:lobby')
    for (const v of [4, 5, 5, 3, 6]) hub.onNotice(notice(v))
    expect(versionsSeen(a)).toEqual(['snapshot:3', 'update:4', 'update:5', 'update:6'])
    hub.stop()
  })

  test('updates arriving while the snapshot is read are neither lost nor repeated', async () => {
    const t = topics()
    const snaps = manualSnapshots()
    const hub = createChannelHub({ snapshot: snaps.read, publish: t.publish, gapTimeoutMs: 1000 })
    const a = t.sink('a')
    const first = hub.subscribe(a, 'chat:lobby')
    await snaps.resolveNext(10)
    await first
    const b = t.sink('b')
    const joining = hub.subscribe(b, 'chat:lobby')
    hub.onNotice(notice(11)) // committed before b's read: in b's snapshot
    hub.onNotice(notice(12)) // committed after b's read: must come as an update
    await snaps.resolveNext(11)
    await joining
    hub.onNotice(notice(13))
    expect(versionsSeen(a)).toEqual(['snapshot:10', 'update:11', 'update:12', 'update:13'])
    expect(versionsSeen(b)).toEqual(['snapshot:11', 'update:12', 'update:13'])
    hub.stop()
  })

  test('a snapshot newer than the live feed waits for the feed, without duplicates', async () => {
    const t = topics()
    const snaps = manualSnapshots()
    const hub = createChannelHub({ snapshot: snaps.read, publish: t.publish, gapTimeoutMs: 1000 })
    const a = t.sink('a')
    const first = hub.subscribe(a, 'chat:lobby')
    await snaps.resolveNext(5)
    await first
    const b = t.sink('b')
    const joining = hub.subscribe(b, 'chat:lobby')
    await snaps.resolveNext(7) // versions 6 and 7 committed, their notices not here yet
    await joining
    for (const v of [6, 7, 8]) hub.onNotice(notice(v))
    expect(versionsSeen(b)).toEqual(['snapshot:7', 'update:8'])
    expect(versionsSeen(a)).toEqual(['snapshot:5', 'update:6', 'update:7', 'update:8'])
    hub.stop()
  })

  test('out-of-order notices are released in version order', async () => {
    const t = topics()
    const hub = createChannelHub({ snapshot: async () => ({ version: 0, epoch: 'e1', data: {} }), publish: t.publish, gapTimeoutMs: 1000 })
    const a = t.sink('a')
    await hub.subscribe(a, 'chat:lobby')
    for (const v of [2, 4, 1, 3]) hub.onNotice(notice(v))
    expect(versionsSeen(a)).toEqual(['snapshot:0', 'update:1', 'update:2', 'update:3', 'update:4'])
    hub.stop()
  })

  test('a version that never arrives re-syncs subscribers with a marked snapshot', async () => {
    const t = topics()
    let version = 1
    const hub = createChannelHub({ snapshot: async () => ({ version, epoch: 'e1', data: {} }), publish: t.publish, gapTimeoutMs: 20 })
    const a = t.sink('a')
    await hub.subscribe(a, 'chat:lobby')
    version = 3
    hub.onNotice(notice(3)) // 2 is lost
    await Bun.sleep(60)
    hub.onNotice(notice(2)) // too late: already in the resync snapshot
    hub.onNotice(notice(4))
    expect(versionsSeen(a)).toEqual(['snapshot:1', 'snapshot:3:resync', 'update:4'])
    hub.stop()
  })

  test('a resync snapshot drops the held notices it covers and releases the ones after it', async () => {
    const t = topics()
    let version = 1
    const hub = createChannelHub({ snapshot: async () => ({ version, epoch: 'e1', data: {} }), publish: t.publish, gapTimeoutMs: 20 })
    const a = t.sink('a')
    await hub.subscribe(a, 'chat:lobby')
    version = 4
    for (const v of [3, 4, 5, 6]) hub.onNotice(notice(v)) // 2 is lost; 3..6 are held
    await Bun.sleep(60)
    hub.onNotice(notice(7))
    expect(versionsSeen(a)).toEqual(['snapshot:1', 'snapshot:4:resync', 'update:5', 'update:6', 'update:7'])
    expect(hub.stats()[0].held).toBe(0)
    hub.stop()
  })

  test('subscribers joining together share one snapshot read; a snapshot older than the topic is read again', async () => {
    const t = topics()
    const snaps = manualSnapshots()
    let reads = 0
    const hub = createChannelHub({ snapshot: () => (reads++, snaps.read()), publish: t.publish, gapTimeoutMs: 1000 })
    const [a, b, c] = ['a', 'b', 'c'].map((id) => t.sink(id))
    const pa = hub.subscribe(a, 'chat:lobby')
    const pb = hub.subscribe(b, 'chat:lobby')
    await snaps.resolveNext(8) // one read for both: sets where the topic starts
    await Promise.all([pa, pb])
    expect(reads).toBe(1)
    hub.onNotice(notice(9))
    const pc = hub.subscribe(c, 'chat:lobby')
    await snaps.resolveNext(5) // older than what the topic had (9): read again
    await snaps.resolveNext(9)
    await pc
    hub.onNotice(notice(10))
    expect(reads).toBe(3)
    expect(versionsSeen(a)).toEqual(['snapshot:8', 'update:9', 'update:10'])
    expect(versionsSeen(b)).toEqual(['snapshot:8', 'update:9', 'update:10'])
    expect(versionsSeen(c)).toEqual(['snapshot:9', 'update:10'])
    hub.stop()
  })

  test('unsubscribe stops updates; the channel is forgotten when empty', async () => {
    const t = topics()
    const hub = createChannelHub({ snapshot: async () => ({ version: 0, epoch: 'e1', data: {} }), publish: t.publish, gapTimeoutMs: 1000 })
    const a = t.sink('a')
    await hub.subscribe(a, 'chat:lobby')
    hub.onNotice(notice(1))
    expect(hub.unsubscribe(a, 'chat:lobby')).toBe(true)
    expect(hub.unsubscribe(a, 'chat:lobby')).toBe(false)
    hub.onNotice(notice(2))
    expect(versionsSeen(a)).toEqual(['snapshot:0', 'update:1'])
    expect(hub.stats()).toEqual([])
    hub.stop()
  })

  test('a client whose queue overflows is cut off instead of silently missing updates', async () => {
    const t = topics()
    const snaps = manualSnapshots()
    const hub = createChannelHub({ snapshot: snaps.read, publish: t.publish, gapTimeoutMs: 1000 })
    const a = t.sink('a')
    a.send = () => 0 // Bun: message dropped
    const p = hub.subscribe(a, 'chat:lobby')
    await snaps.resolveNext(1)
    await p
    expect(a.overflowed).toBe(true)
    hub.stop()
  })

  test('frames carry the epoch; an empty channel takes the epoch of its first notice', async () => {
    const t = topics()
    const hub = createChannelHub({ snapshot: async () => ({ version: 0, epoch: '', data: {} }), publish: t.publish, gapTimeoutMs: 1000 })
    const a = t.sink('a')
    await hub.subscribe(a, 'chat:lobby')
    hub.onNotice(notice(1, 'chat:lobby', 'x1'))
    hub.onNotice(notice(2, 'chat:lobby', 'x1'))
    expect(a.frames.map((f) => `${f.op}:${f.version}:${f.epoch}`)).toEqual(['snapshot:0:', 'update:1:x1', 'update:2:x1'])
    hub.stop()
  })

  test('a notice of another epoch re-syncs subscribers; late notices of the old epoch are dropped', async () => {
    const t = topics()
    let snap: Snapshot = { version: 5, epoch: 'e1', data: {} }
    const hub = createChannelHub({ snapshot: async () => snap, publish: t.publish, gapTimeoutMs: 1000 })
    const a = t.sink('a')
    await hub.subscribe(a, 'chat:lobby')
    snap = { version: 2, epoch: 'e2', data: {} } // rebuilt: a new history, shorter
    hub.onNotice(notice(2, 'chat:lobby', 'e2'))
    await Bun.sleep(5)
    hub.onNotice(notice(6, 'chat:lobby', 'e1')) // late notice of the retired epoch
    hub.onNotice(notice(3, 'chat:lobby', 'e2'))
    expect(a.frames.map((f) => `${f.op}:${f.version}:${f.epoch}${f.resync ? ':resync' : ''}`)).toEqual([
      'snapshot:5:e1',
      'snapshot:2:e2:resync',
      'update:3:e2',
    ])
    hub.stop()
  })

  test('a restart of the history re-syncs at once, an empty topic too; one a snapshot already showed changes nothing', async () => {
    const t = topics()
    let snap: Snapshot = { version: 0, epoch: '', data: { rules: 'old' } }
    const hub = createChannelHub({ snapshot: async () => snap, publish: t.publish, gapTimeoutMs: 60_000 })
    const a = t.sink('a')
    await hub.subscribe(a, 'leaderboard:b')
    // The rules changed: a new epoch at version 1, with no notice of its own; then the first score.
    snap = { version: 1, epoch: 'r1', data: { rules: 'new' } }
    hub.onRestart('leaderboard:b', 1, 'r1')
    await Bun.sleep(5)
    hub.onNotice(notice(2, 'leaderboard:b', 'r1'))
    // A late copy of the same restart (the sweeper published it again).
    hub.onRestart('leaderboard:b', 1, 'r1')
    await Bun.sleep(5)
    expect(a.frames.map((f) => `${f.op}:${f.version}:${f.epoch}${f.resync ? ':resync' : ''}:${f.data.rules ?? ''}`)).toEqual([
      'snapshot:0::old',
      'snapshot:1:r1:resync:new',
      'update:2:r1:',
    ])
    hub.stop()
  })

  /** A hub with a fixed history and head, for resume tests. */
  function resumable(head: number, kept: number[], epoch = 'e1') {
    const t = topics()
    const hub = createChannelHub({
      snapshot: async () => ({ version: head, epoch, data: { head } }),
      history: async (_c, after) => kept.filter((v) => v > after).reverse().map((v) => notice(v, 'chat:lobby', epoch)),
      publish: t.publish,
      gapTimeoutMs: 1000,
      maxReplay: 5,
    })
    return { t, hub }
  }

  test('resume with since and epoch replays exactly the missed updates, then live ones', async () => {
    const { t, hub } = resumable(6, [1, 2, 3, 4, 5, 6])
    const a = t.sink('a')
    await hub.subscribe(a, 'chat:lobby', { since: 3, epoch: 'e1' })
    hub.onNotice(notice(6)) // already replayed
    hub.onNotice(notice(7))
    expect(a.frames[0]).toEqual({ op: 'subscribed', channel: 'chat:lobby', version: 3, epoch: 'e1', recovered: true })
    expect(versionsSeen(a)).toEqual(['subscribed:3', 'update:4', 'update:5', 'update:6', 'update:7'])
    hub.stop()
  })

  test('resume at the current version gets no replay, only live updates', async () => {
    const { t, hub } = resumable(6, [1, 2, 3, 4, 5, 6])
    const a = t.sink('a')
    await hub.subscribe(a, 'chat:lobby', { since: 6, epoch: 'e1' })
    hub.onNotice(notice(7))
    expect(versionsSeen(a)).toEqual(['subscribed:6', 'update:7'])
    hub.stop()
  })

  test('resume falls back to a resync snapshot: other epoch, trimmed history, too far behind', async () => {
    for (const [from, kept] of [
      [{ since: 3, epoch: 'old' }, [1, 2, 3, 4, 5, 6]],
      [{ since: 2, epoch: 'e1' }, [4, 5, 6]],
      [{ since: 0, epoch: 'e1' }, [1, 2, 3, 4, 5, 6]], // 6 updates behind, replay cap is 5
    ] as const) {
      const { t, hub } = resumable(6, [...kept])
      const a = t.sink('a')
      await hub.subscribe(a, 'chat:lobby', from)
      hub.onNotice(notice(7))
      expect(versionsSeen(a)).toEqual(['snapshot:6:resync', 'update:7'])
      hub.stop()
    }
  })

  test('updates arriving while history is read are merged without duplicates', async () => {
    const t = topics()
    let release!: () => void
    const gate = new Promise<void>((r) => (release = r))
    const hub = createChannelHub({
      snapshot: async () => ({ version: 4, epoch: 'e1', data: {} }),
      history: async (_c, after) => {
        await gate
        return [5, 4, 3, 2, 1].filter((v) => v > after).map((v) => notice(v))
      },
      publish: t.publish,
      gapTimeoutMs: 1000,
    })
    const a = t.sink('a')
    await hub.subscribe(a, 'chat:lobby') // sets the topic at 4
    const b = t.sink('b')
    const resuming = hub.subscribe(b, 'chat:lobby', { since: 2, epoch: 'e1' })
    await Bun.sleep(2)
    hub.onNotice(notice(5)) // in the history read too
    hub.onNotice(notice(6)) // only live
    release()
    await resuming
    hub.onNotice(notice(7))
    expect(versionsSeen(b)).toEqual(['subscribed:2', 'update:3', 'update:4', 'update:5', 'update:6', 'update:7'])
    expect(versionsSeen(a)).toEqual(['snapshot:4', 'update:5', 'update:6', 'update:7'])
    hub.stop()
  })

  test('a client claiming a version the channel never had gets a resync snapshot', async () => {
    const { t, hub } = resumable(8, [1, 2, 3, 4, 5, 6, 7, 8])
    const a = t.sink('a')
    await hub.subscribe(a, 'chat:lobby') // topic at 8 (snapshot)
    const b = t.sink('b')
    // b saw 9 elsewhere; this node has not yet: the snapshot says 8, so 9 is refused
    await hub.subscribe(b, 'chat:lobby', { since: 9, epoch: 'e1' })
    expect(versionsSeen(b)).toEqual(['snapshot:8:resync'])
    hub.stop()
  })

  test('a resume while the node waits for a missing version replays up to the hole, the rest comes live', async () => {
    const { t, hub } = resumable(3, [1, 2, 3, 5]) // 4 not yet stored when history is read
    const a = t.sink('a')
    await hub.subscribe(a, 'chat:lobby') // topic at 3
    hub.onNotice(notice(5)) // held: 4 is missing
    const b = t.sink('b')
    await hub.subscribe(b, 'chat:lobby', { since: 1, epoch: 'e1' })
    hub.onNotice(notice(4))
    expect(versionsSeen(b)).toEqual(['subscribed:1', 'update:2', 'update:3', 'update:4', 'update:5'])
    hub.stop()
  })

  test('a resync snapshot is never older than updates the topic already delivered', async () => {
    const t = topics()
    const snaps = manualSnapshots()
    const timers: (() => void)[] = []
    const hub = createChannelHub({
      snapshot: snaps.read,
      publish: t.publish,
      gapTimeoutMs: 1000,
      timers: { set: (fn) => timers.push(fn), clear: () => {} },
    })
    const a = t.sink('a')
    const p = hub.subscribe(a, 'chat:lobby')
    await snaps.resolveNext(5)
    await p
    hub.onNotice(notice(7)) // 6 is late: 7 waits
    timers.shift()!() // the gap timeout: a resync starts reading (6 and 7 are committed)
    hub.onNotice(notice(6)) // the late one arrives while the resync reads
    hub.onNotice(notice(8)) // committed after the read began
    await snaps.resolveNext(7)
    hub.onNotice(notice(9))
    // Before: snapshot:5, update:6, update:7, update:8, then the older snapshot:7 (8 lost to
    // whoever replaced their state with it).
    expect(versionsSeen(a)).toEqual(['snapshot:5', 'snapshot:7:resync', 'update:8', 'update:9'])
    hub.stop()
  })

  test('a snapshot read begun for a channel state that is gone is never used by a new state', async () => {
    const t = topics()
    const snaps = manualSnapshots()
    const hub = createChannelHub({ snapshot: snaps.read, publish: t.publish, gapTimeoutMs: 1000 })
    const a = t.sink('a')
    const pa = hub.subscribe(a, 'chat:lobby') // reads (at version 5)
    hub.unsubscribe(a, 'chat:lobby') // the last member left: the state is gone, the read goes on
    hub.onNotice(notice(6)) // nobody here watches the channel: dropped
    const b = t.sink('b')
    const pb = hub.subscribe(b, 'chat:lobby')
    await snaps.resolveNext(5) // a's read, from before 6
    await snaps.resolveNext(6) // b's own read
    await Promise.all([pa, pb])
    hub.onNotice(notice(7))
    // Before: b was initialised from a's read (5) and waited for 6, which had come and gone.
    expect(versionsSeen(b)).toEqual(['snapshot:6', 'update:7'])
    expect(versionsSeen(a)).toEqual([])
    hub.stop()
  })

  test('resumes of one channel in the same turn share one history read and one snapshot read', async () => {
    const t = topics()
    let historyReads = 0
    let snapshotReads = 0
    const hub = createChannelHub({
      snapshot: async () => (snapshotReads++, { version: 10, epoch: 'e1', data: {} }),
      history: async (_c, after) => (historyReads++, [10, 9, 8, 7, 6, 5, 4, 3, 2, 1].filter((v) => v > after).map((v) => notice(v))),
      publish: t.publish,
      gapTimeoutMs: 1000,
    })
    const sinks = Array.from({ length: 50 }, (_, i) => t.sink(`s${i}`))
    await Promise.all(sinks.map((s, i) => hub.subscribe(s, 'chat:lobby', { since: 1 + (i % 9), epoch: 'e1' })))
    expect(snapshotReads).toBe(1)
    expect(historyReads).toBe(1)
    sinks.forEach((s, i) => {
      const since = 1 + (i % 9)
      expect(versionsSeen(s)).toEqual([`subscribed:${since}`, ...Array.from({ length: 10 - since }, (_, k) => `update:${since + k + 1}`)])
    })
    hub.stop()
  })

  test('a refused resume never gets a snapshot older than the version the client already had', async () => {
    const t = topics()
    const snaps = manualSnapshots()
    // No shared history on this node: every resume is refused.
    const hub = createChannelHub({ snapshot: snaps.read, publish: t.publish, gapTimeoutMs: 1000 })
    const a = t.sink('a')
    const pa = hub.subscribe(a, 'chat:lobby') // the shared read starts (the channel is at 5)
    const b = t.sink('b')
    // b had 9 from another node (committed after a's read began): its resync snapshot must not be
    // the shared read at 5.
    const pb = hub.subscribe(b, 'chat:lobby', { since: 9, epoch: 'e1' })
    await snaps.resolveNext(5)
    await snaps.resolveNext(9)
    await Promise.all([pa, pb])
    expect(versionsSeen(b)[0]).toBe('snapshot:9:resync')
    hub.stop()
  })

  test('a snapshot current only until a time (a period ends) is followed then by a fresh one, marked resync', async () => {
    const t = topics()
    let period = 'p1'
    const hub = createChannelHub({
      // The first period ends 40 ms from now; the next one lasts.
      snapshot: async () => ({ version: 3, epoch: 'e1', data: { period }, ...(period === 'p1' ? { until: Date.now() + 40 } : {}) }),
      publish: t.publish,
      gapTimeoutMs: 1000,
    })
    const a = t.sink('a')
    await hub.subscribe(a, 'leaderboard:daily')
    period = 'p2'
    await Bun.sleep(150)
    hub.onNotice(notice(4, 'leaderboard:daily'))
    expect(a.frames.map((f) => `${f.op}:${f.version}${f.data.period ? `:${f.data.period}` : ''}${f.resync ? ':resync' : ''}`)).toEqual([
      'snapshot:3:p1',
      'snapshot:3:p2:resync',
      'update:4',
    ])
    hub.stop()
  })

  test('a subscriber joining just after a period ended does not cancel the re-sync of those who hold the old period', async () => {
    const t = topics()
    const end = Date.now() + 40
    // Read by the clock: the first period until `end`, then the next one, which lasts a day.
    const hub = createChannelHub({
      snapshot: async () => {
        const period = Date.now() < end ? 'p1' : 'p2'
        return { version: 3, epoch: 'e1', data: { period }, until: period === 'p1' ? end : end + 86_400_000 }
      },
      publish: t.publish,
      gapTimeoutMs: 1000,
    })
    const a = t.sink('a')
    await hub.subscribe(a, 'leaderboard:daily')
    // The period ended; the hub re-syncs a little after (50 ms). b joins in between.
    await Bun.sleep(end - Date.now() + 5)
    const b = t.sink('b')
    await hub.subscribe(b, 'leaderboard:daily')
    await Bun.sleep(200)
    const seen = (s: FakeSink) => s.frames.map((f) => `${f.op}:${f.data.period}${f.resync ? ':resync' : ''}`)
    expect(seen(b)[0]).toBe('snapshot:p2')
    expect(seen(a)).toEqual(['snapshot:p1', 'snapshot:p2:resync'])
    hub.stop()
  })

  test('a resume into a later period than the one its version was reached in gets a snapshot', async () => {
    const t = topics()
    const day = 86_400_000
    const start = Math.floor(Date.now() / day) * day
    // Versions 1-3 were committed yesterday, 4 and 5 well into today (the current period).
    const at = (v: number) => new Date(v <= 3 ? start - 60_000 : start + 60_000).toISOString()
    let historyReads = 0
    const hub = createChannelHub({
      snapshot: async () => ({ version: 5, epoch: 'e1', data: { period: 'today' }, from: start, until: start + day }),
      history: async (_c, after) => (historyReads++, [5, 4, 3, 2, 1].filter((v) => v > after).map((v) => ({ ...notice(v, 'leaderboard:daily'), at: at(v) }))),
      publish: t.publish,
      gapTimeoutMs: 1000,
    })
    // Yesterday's client: its standings are those of the period that ended.
    const a = t.sink('a')
    await hub.subscribe(a, 'leaderboard:daily', { since: 3, epoch: 'e1' })
    expect(a.frames.map((f) => `${f.op}:${f.version}:${f.data?.period}${f.resync ? ':resync' : ''}`)).toEqual(['snapshot:5:today:resync'])
    // Today's client resumes as before.
    const b = t.sink('b')
    historyReads = 0
    await hub.subscribe(b, 'leaderboard:daily', { since: 4, epoch: 'e1' })
    expect(versionsSeen(b)).toEqual(['subscribed:4', 'update:5'])
    // The history read for its period is the one its replay comes from.
    expect(historyReads).toBe(1)
    hub.stop()
  })

  test('a period ending more than 2^31-1 ms away (a monthly board early in the month) is not re-synced at once', async () => {
    const t = topics()
    let reads = 0
    // Real timers: setTimeout runs a delay past 2^31-1 ms after 1 ms, which re-synced in a loop.
    const hub = createChannelHub({
      snapshot: async () => (reads++, { version: 3, epoch: 'e1', data: {}, until: Date.now() + 30 * 86_400_000 }),
      publish: t.publish,
      gapTimeoutMs: 1000,
    })
    const a = t.sink('a')
    await hub.subscribe(a, 'leaderboard:monthly')
    await Bun.sleep(200)
    expect(reads).toBe(1)
    expect(a.frames.map((f) => `${f.op}:${f.version}${f.resync ? ':resync' : ''}`)).toEqual(['snapshot:3'])
    hub.stop()
  })
})
