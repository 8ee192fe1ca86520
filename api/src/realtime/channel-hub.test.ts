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

const notice = (version: number, channel = 'chat:lobby'): ChangeNotice => ({
  channel,
  version,
  data: { kind: 'deleted', messageId: `m${version}` },
  at: '',
})

/** Snapshot reads that the test resolves by hand, to place notices during a read. */
function manualSnapshots() {
  const waiting: ((s: Snapshot) => void)[] = []
  return {
    read: () => new Promise<Snapshot>((resolve) => waiting.push(resolve)),
    resolveNext: async (version: number) => {
      for (let i = 0; i < 50 && waiting.length === 0; i++) await Bun.sleep(1)
      waiting.shift()!({ version, data: { v: version } })
      await Bun.sleep(1)
    },
    pending: () => waiting.length,
  }
}

const versionsSeen = (s: FakeSink) => s.frames.map((f) => `${f.op}:${f.version}${f.resync ? ':resync' : ''}`)

describe('channel hub', () => {
  test('snapshot, then each update once, in order', async () => {
    const t = topics()
    const hub = createChannelHub({ snapshot: async () => ({ version: 3, data: {} }), publish: t.publish, gapTimeoutMs: 1000 })
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
    const hub = createChannelHub({ snapshot: async () => ({ version: 0, data: {} }), publish: t.publish, gapTimeoutMs: 1000 })
    const a = t.sink('a')
    await hub.subscribe(a, 'chat:lobby')
    for (const v of [2, 4, 1, 3]) hub.onNotice(notice(v))
    expect(versionsSeen(a)).toEqual(['snapshot:0', 'update:1', 'update:2', 'update:3', 'update:4'])
    hub.stop()
  })

  test('a version that never arrives re-syncs subscribers with a marked snapshot', async () => {
    const t = topics()
    let version = 1
    const hub = createChannelHub({ snapshot: async () => ({ version, data: {} }), publish: t.publish, gapTimeoutMs: 20 })
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

  test('two first subscribers with different snapshots both stay gap-free', async () => {
    const t = topics()
    const snaps = manualSnapshots()
    const hub = createChannelHub({ snapshot: snaps.read, publish: t.publish, gapTimeoutMs: 1000 })
    const a = t.sink('a')
    const b = t.sink('b')
    const pa = hub.subscribe(a, 'chat:lobby')
    const pb = hub.subscribe(b, 'chat:lobby')
    await snaps.resolveNext(8) // a's read: sets where the topic starts
    await pa
    hub.onNotice(notice(9))
    await snaps.resolveNext(5) // b's read started earlier and is older than what the topic had: read again
    await snaps.resolveNext(9)
    await pb
    hub.onNotice(notice(10))
    expect(versionsSeen(a)).toEqual(['snapshot:8', 'update:9', 'update:10'])
    expect(versionsSeen(b)).toEqual(['snapshot:9', 'update:10'])
    hub.stop()
  })

  test('unsubscribe stops updates; the channel is forgotten when empty', async () => {
    const t = topics()
    const hub = createChannelHub({ snapshot: async () => ({ version: 0, data: {} }), publish: t.publish, gapTimeoutMs: 1000 })
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
})
