import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { createClient, type Client, type Status } from '../../client/src'
import { tcpProxy, type TcpProxy } from '../../core/testing/tcp-proxy'
import { freePort, until } from '../e2e/harness'
import { startDeployment, type Deployment } from './deployment'

/**
 * The SDK against real processes with a faulty network between it and the API node: a proxy that
 * cuts every connection (the client may reconnect at once), stalls traffic (a half-open
 * connection), or delays it.
 */
describe('client SDK: network faults', () => {
  let d: Deployment
  const clients: Client[] = []
  const proxies: TcpProxy[] = []
  const open = (c: Client) => (clients.push(c), c)
  const urlOf = (p: TcpProxy) => `http://127.0.0.1:${p.port}`
  const proxy = () => {
    const target = new URL(d.urls[0])
    const p = tcpProxy({ port: freePort(), target: { host: target.hostname, port: Number(target.port) } })
    proxies.push(p)
    return p
  }
  beforeAll(async () => {
    d = await startDeployment({
      apis: 1,
      workers: 1,
      vars: {
        FANFARE_PARTITIONS: '2',
        FANFARE_TOKEN_WARNING_MS: '1000',
        FANFARE_PRESENCE_GRACE_MS: '1000',
        FANFARE_WS_PUBLISHES_PER_SECOND: '2000',
        FANFARE_WS_PUBLISH_BURST: '2000',
        FANFARE_USER_OPS_PER_SECOND: '4000',
        FANFARE_USER_OPS_BURST: '4000',
        // Anonymous viewers (all of this test's come from one address) get a small budget.
        FANFARE_ANONYMOUS_OPS_PER_SECOND: '20',
        FANFARE_ANONYMOUS_OPS_BURST: '60',
      },
    })
  }, 60_000)
  afterAll(async () => {
    for (const c of clients) c.close()
    for (const p of proxies) p.close()
    await d?.stop()
  })

  /** Four rounds of a cut (reconnected through at once), a 1.5 s half-open stall and a delay, `gapMs` apart. */
  const faultRounds = async (p: TcpProxy, opts: { gapMs: number; delayMs: number }) => {
    for (let round = 0; round < 4; round++) {
      await Bun.sleep(opts.gapMs)
      p.cut()
      p.restore()
      await Bun.sleep(opts.gapMs)
      p.stall()
      await Bun.sleep(1500)
      p.restore()
      await Bun.sleep(300)
      p.delay(opts.delayMs)
      await Bun.sleep(500)
      p.delay(0)
    }
  }

  const readRoom = async (room: string) => {
    const texts: string[] = []
    let before: string | undefined
    for (;;) {
      const page = (await d.call('GET', `/v1/rooms/${room}/messages?limit=100${before ? `&before=${before}` : ''}`)).json
      if (page.messages.length === 0) return texts.reverse()
      texts.push(...page.messages.map((m: any) => m.text))
      before = page.messages.at(-1).id
    }
  }

  test('publishes through cuts, pauses and delays: every one stored once, in order', async () => {
    const p = proxy()
    const room = 'faults_pub'
    const c = open(createClient({ urls: [urlOf(p)], token: () => d.token('ann'), backoff: { minMs: 50, maxMs: 300 }, pingIntervalMs: 500, pongTimeoutMs: 500, connectTimeoutMs: 1500, requestTimeoutMs: 2000 }))
    const statuses: Status[] = []
    c.on('status', (s) => void statuses.push(s))
    const sent: string[] = []
    const published: Promise<unknown>[] = []
    const errors: string[] = []
    let going = true
    const chat = (async () => {
      for (let i = 0; going; i++) {
        const text = `m${i}`
        sent.push(text)
        published.push(c.publish({ type: 'chat.message.posted', data: { room, user: 'ann', text } }).catch((e) => void errors.push(`${text}: ${e.code} ${e.message}`)))
        await Bun.sleep(5)
      }
    })()
    await faultRounds(p, { gapMs: 300, delayMs: 200 })
    going = false
    await chat
    await until('all acknowledged', async () => (await Promise.race([Promise.all(published).then(() => true), Bun.sleep(100).then(() => false)])), 30_000)
    expect(errors).toEqual([])
    const texts = await until('projected', async () => ((await readRoom(room)).length >= sent.length ? readRoom(room) : undefined), 20_000, 200)
    expect(texts).toEqual(sent)
    console.log(`publishes: ${sent.length} through ${statuses.filter((s) => s.state === 'reconnecting').length} reconnects`)
  }, 60_000)

  test('subscriptions through cuts and pauses: every change in order or a re-sync said plainly, never live while offline', async () => {
    const p = proxy()
    const board = 'faults_board'
    const room = 'faults_room'
    const c = open(createClient({ urls: [urlOf(p)], token: () => d.token('bob'), backoff: { minMs: 50, maxMs: 300 }, pingIntervalMs: 500, pongTimeoutMs: 500, connectTimeoutMs: 1500, requestTimeoutMs: 2000 }))
    const problems: string[] = []
    const counts = { updates: 0, resyncs: 0 }
    const follow = (channel: string) => {
      let last: number | undefined
      let epoch = ''
      return c.subscribe(channel, {
        onUpdate: (_: unknown, i: { from: number; version: number; epoch: string }) => {
          counts.updates++
          if (last !== undefined && (i.from !== last + 1 || (epoch !== '' && i.epoch !== epoch))) problems.push(`${channel}: update ${i.from}..${i.version} after ${last}`)
          last = i.version
          epoch = i.epoch
        },
        onState: (_: unknown, i: { version: number; epoch: string; resync: boolean }) => {
          if (i.resync) counts.resyncs++
          // A state that is not a re-sync continues the one before.
          if (!i.resync && last !== undefined && i.version !== last) problems.push(`${channel}: state at ${i.version} after ${last} without a re-sync`)
          last = i.version
          epoch = i.epoch
        },
      })
    }
    const subs = [follow(`leaderboard:${board}`), follow(`chat:${room}`)]
    c.on('status', (s) => {
      if (s.state !== 'connected' && subs.some((x) => x.status === 'live')) problems.push(`a subscription is live while the client is ${s.state}`)
    })
    await until('live', () => subs.every((x) => x.status === 'live'))
    let going = true
    const traffic = (async () => {
      for (let n = 0; going; n++) {
        const events = [
          ...Array.from({ length: 5 }, (_, k) => ({ type: 'score.submitted', data: { board, player: `p${(n * 5 + k) % 30}`, score: (n * 5 + k) % 23 } })),
          { type: 'chat.message.posted', data: { room, user: 'carl', text: `c${n}` } },
        ]
        const res = await d.call('POST', '/v1/events', { events })
        if (res.status !== 202) throw new Error(`ingest answered ${res.status}`)
        await Bun.sleep(20)
      }
    })()
    await faultRounds(p, { gapMs: 400, delayMs: 150 })
    going = false
    await traffic
    await until(
      'held equals the read models',
      async () => {
        const b = (await d.call('GET', `/v1/leaderboards/${board}?limit=100`)).json
        const r = (await d.call('GET', `/v1/rooms/${room}/messages?limit=50`)).json
        const held = (subs[0].state as any)?.entries.map(({ reachedSeq: _, ...e }: any) => e)
        return Bun.deepEquals(held, b.entries) && Bun.deepEquals((subs[1].state as any)?.messages, r.messages)
      },
      20_000,
      100,
    )
    expect(problems).toEqual([])
    console.log(`subscriptions: ${counts.updates} updates, ${counts.resyncs} re-syncs`)
  }, 60_000)

  test('a half-open connection is found within pingIntervalMs + pongTimeoutMs and replaced', async () => {
    const p = proxy()
    const c = open(createClient({ urls: [urlOf(p)], token: () => d.token('dan'), pingIntervalMs: 2000, pongTimeoutMs: 1000, backoff: { minMs: 50, maxMs: 200 } }))
    const sub = c.subscribe('leaderboard:faults_idle')
    await until('live', () => sub.status === 'live')
    await Bun.sleep(300)
    p.stall()
    const stalledAt = Date.now()
    await until('the dead connection is found', () => c.status.state !== 'connected', 10_000, 10)
    const foundIn = Date.now() - stalledAt
    // Silent for pingIntervalMs (the last frame came before the stall), then pinged, then pongTimeoutMs.
    expect(foundIn).toBeLessThanOrEqual(2000 + 1000 + 200)
    p.restore()
    await until('live again', () => sub.status === 'live' && c.status.state === 'connected', 15_000)
    console.log(`half-open found in ${foundIn} ms`)
  }, 30_000)

  test('90 channels past the address budget for subscribes, and two cuts: every one comes back, without a 4029', async () => {
    // 60 subscribes at once, then 20 a second. Retried all together when their wait ended, the 30
    // refused ones were refused again (but one) every 50 ms, the socket was closed as abusive
    // (4029, 5 s), and the next socket subscribed all 90 at once again: never all live.
    const p = proxy()
    const c = open(createClient({ urls: [urlOf(p)], backoff: { minMs: 100, maxMs: 1000 } }))
    const closes: string[] = []
    c.on('status', (s) => void (s.state === 'reconnecting' && s.reason.code === 4029 && closes.push(s.reason.message)))
    const subs = Array.from({ length: 90 }, (_, i) => c.subscribe(`leaderboard:faults_many_${i}`))
    const notLive = () => subs.filter((x) => x.status !== 'live').length
    await until('all live', () => notLive() === 0, 15_000).catch(() => {
      throw new Error(`${notLive()} channels not live; closes: ${closes}`)
    })
    for (let i = 0; i < 2; i++) {
      await Bun.sleep(200)
      p.cut()
      p.restore()
    }
    await until('all live again', () => notLive() === 0 && c.status.state === 'connected', 15_000).catch(() => {
      throw new Error(`${notLive()} channels not live after the cuts; closes: ${closes}`)
    })
    expect(closes).toEqual([])
  }, 60_000)

  test('unsubscribed and subscribed again while its resume is on the wire: the new subscription follows the board', async () => {
    const p = proxy()
    const board = 'faults_again'
    const c = open(createClient({ urls: [urlOf(p)], token: () => d.token('eve'), backoff: { minMs: 50, maxMs: 200 } }))
    const errors: string[] = []
    c.on('error', (e) => void errors.push(`${e.code}: ${e.message}`))
    let sub = c.subscribe(`leaderboard:${board}`)
    await until('live', () => sub.status === 'live')
    let going = true
    const scores = (async () => {
      for (let n = 0; going; n++) {
        const res = await d.call('POST', '/v1/events', { events: [{ type: 'score.submitted', data: { board, player: `p${n % 20}`, score: n } }] })
        if (res.status !== 202) throw new Error(`ingest answered ${res.status}`)
        await Bun.sleep(5)
      }
    })()
    await Bun.sleep(300)
    p.delay(150)
    const again = new Promise<void>((ok) => {
      const off = c.on('status', (s) => {
        if (s.state !== 'connected') return
        off()
        // Once the resume went out: drop it and follow the board anew.
        setTimeout(() => {
          sub.unsubscribe()
          sub = c.subscribe(`leaderboard:${board}`)
          ok()
        }, 0)
      })
    })
    p.cut()
    p.restore()
    await again
    await Bun.sleep(1000)
    p.delay(0)
    await Bun.sleep(1000)
    going = false
    await scores
    await until(
      'held equals the read model',
      async () => {
        const b = (await d.call('GET', `/v1/leaderboards/${board}?limit=100`)).json
        return sub.status === 'live' && Bun.deepEquals((sub.state as any)?.entries.map(({ reachedSeq: _, ...e }: any) => e), b.entries)
      },
      10_000,
      100,
    ).catch((err) => {
      throw new Error(`${err.message}; status ${sub.status}, version ${sub.version}; errors: ${errors.slice(0, 5).join(' | ')}`)
    })
  }, 30_000)

  test('tokens expiring while the connection is half-open: fresh ones are fetched, the client never closes, publishes are stored once', async () => {
    const p = proxy()
    const room = 'faults_tokens'
    let minted = 0
    const c = open(
      createClient({
        urls: [urlOf(p)],
        token: () => (minted++, d.token('fay', { ttlSeconds: 3 })),
        backoff: { minMs: 50, maxMs: 300 },
        pingIntervalMs: 500,
        pongTimeoutMs: 500,
        connectTimeoutMs: 1000,
        requestTimeoutMs: 1500,
      }),
    )
    const statuses: Status[] = []
    c.on('status', (s) => void statuses.push(s))
    const sub = c.subscribe(`chat:${room}`)
    await until('live', () => sub.status === 'live')
    const sent: string[] = []
    const published: Promise<unknown>[] = []
    const failures: string[] = []
    let going = true
    const chat = (async () => {
      for (let i = 0; going; i++) {
        sent.push(`t${i}`)
        published.push(c.publish({ type: 'chat.message.posted', data: { room, user: 'fay', text: `t${i}` } }).catch((e) => void failures.push(`t${i}: ${e.code}`)))
        await Bun.sleep(50)
      }
    })()
    // Pauses across the warnings and expiries of several tokens, and one cut in the middle of a renewal.
    for (const [at, ms] of [[1500, 2500], [1200, 4000], [1900, 300]]) {
      await Bun.sleep(at)
      p.stall()
      await Bun.sleep(ms)
      p.restore()
    }
    await Bun.sleep(2000)
    going = false
    await chat
    await until('acknowledged', () => Promise.race([Promise.all(published).then(() => true), Bun.sleep(100).then(() => false)]), 20_000)
    expect(failures).toEqual([])
    expect(statuses.filter((s) => s.state === 'closed')).toEqual([])
    const texts = await until('projected', async () => ((await readRoom(room)).length >= sent.length ? readRoom(room) : undefined), 20_000, 200)
    expect(texts).toEqual(sent)
    await until('live', () => sub.status === 'live' && c.status.state === 'connected', 10_000)
    const reasons = statuses.filter((s) => s.state === 'reconnecting').map((s) => (s as { reason: { code: number } }).reason.code)
    // A token renewed while the path was down (its `authed` never came back) has no known expiry:
    // the SDK may reconnect with it once after it expired, is told 4001, and fetches another.
    expect(reasons.filter((r) => r === 4001).length).toBeLessThanOrEqual(3)
    console.log(`tokens: ${minted} minted, reconnects for ${reasons.join(',')}`)
  }, 60_000)

  test('a room left while the connection is down (cut) or half-open (paused): its user is not present once it is back', async () => {
    for (const fault of ['cut', 'stall'] as const) {
      const p = proxy()
      const room = `faults_left_${fault}`
      const c = open(createClient({ urls: [urlOf(p)], token: () => d.token(`gus_${fault}`), backoff: { minMs: 50, maxMs: 200 }, pingIntervalMs: 500, pongTimeoutMs: 500 }))
      const stay = c.subscribe(`leaderboard:faults_left_${fault}`)
      const sub = c.subscribe(`chat:${room}`)
      // Waits sized for a loaded CI machine (the default 5 s ran out once beside the browser tests).
      await until('live', () => sub.status === 'live' && stay.status === 'live', 15_000)
      const present = async () => (await d.call('GET', `/v1/presence/chat:${room}`)).json?.users
      await until('present', async () => (await present()) === 1, 15_000)
      // Seen through its status events, not by polling its state: after a cut the client is back
      // within its 50-200 ms backoff, and a poll held up longer than that on a loaded machine
      // never saw it offline (CI).
      let offline = false
      const off = c.on('status', (s) => void (s.state !== 'connected' && (offline = true)))
      if (fault === 'cut') p.cut(), p.restore()
      else p.stall()
      await until('offline', () => offline, 10_000, 5)
      off()
      sub.unsubscribe()
      if (fault === 'stall') p.restore()
      await until('back', () => c.status.state === 'connected' && stay.status === 'live', 10_000)
      await until('gone', async () => (await present()) === 0, 8000, 100).catch(async () => {
        throw new Error(`${fault}: still ${await present()} present in ${room}`)
      })
    }
  }, 60_000)
})
