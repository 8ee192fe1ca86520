import { describe, expect, test } from 'bun:test'
import { Counter, Histogram, Registry } from 'prom-client'
import { createMetrics, FRAME_OPS, opOf } from './metrics'

describe('metrics', () => {
  test('opOf names the op of every server frame shape without parsing it', () => {
    const frames: Record<string, unknown> = {
      update: { op: 'update', channel: 'c', version: 1 },
      snapshot: { op: 'snapshot', channel: 'c' },
      subscribed: { op: 'subscribed', channel: 'c', recovered: true },
      unsubscribed: { op: 'unsubscribed', channel: 'c' },
      ack: { op: 'ack', ref: 'r' },
      authed: { op: 'authed', principal: 'u:x' },
      error: { op: 'error', error: {} },
      pong: { op: 'pong' },
      token_expiring: { op: 'token_expiring', expiresAt: 'x' },
      warning: { op: 'warning', warning: {} },
    }
    for (const [op, frame] of Object.entries(frames)) expect(opOf(JSON.stringify(frame))).toBe(op as never)
    expect(opOf('{"channel":"c"}')).toBe('other')
    expect(opOf('')).toBe('other')
    expect(FRAME_OPS).toContain('other')
  })

  test('labels stay bounded: unknown close codes count as other', async () => {
    const m = createMetrics()
    m.ws.disconnected(1001)
    m.ws.disconnected(3999)
    m.ws.disconnected(4321)
    const text = await m.text()
    expect(text).toContain('fanfare_ws_disconnects_total{code="1001"} 1')
    expect(text).toContain('fanfare_ws_disconnects_total{code="other"} 2')
  })

  test('gauges read their sources when scraped; counts add in bulk', async () => {
    const m = createMetrics()
    let connections = 3
    m.ws.watch({ connections: () => connections, subscriptions: () => 7, channels: () => 2 })
    m.ws.sent('{"op":"update","channel":"c"}', 500)
    m.ws.sent('{"op":"update","channel":"c"}', 0)
    m.ingest.ingested('chat.message.posted', 'ws', 2)
    m.push.pushed('chat', 1_000, 900, 1_050)
    expect(await m.text()).toContain('fanfare_ws_connections 3')
    connections = 4
    const text = await m.text()
    expect(text).toContain('fanfare_ws_connections 4')
    expect(text).toContain('fanfare_ws_subscriptions 7')
    expect(text).toContain('fanfare_ws_messages_sent_total{op="update"} 500')
    expect(text).toContain('fanfare_events_ingested_total{type="chat.message.posted",via="ws"} 2')
    expect(text).toContain('fanfare_commit_to_push_seconds_sum{kind="chat"} 0.05')
    expect(text).toContain('fanfare_event_to_push_seconds_sum{kind="chat"} 0.15')
  })

  test('the push histograms and the frames counter read as prom-client\'s own would, line for line', async () => {
    const m = createMetrics()
    const reference = new Registry()
    const buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    const commit = new Histogram({ name: 'fanfare_commit_to_push_seconds', help: 'x', labelNames: ['kind'], buckets, registers: [reference] })
    const event = new Histogram({ name: 'fanfare_event_to_push_seconds', help: 'x', labelNames: ['kind'], buckets, registers: [reference] })
    const sent = new Counter({ name: 'fanfare_ws_messages_sent_total', help: 'x', labelNames: ['op'], registers: [reference] })
    // Lags on and between bucket bounds, past the last one, and zero; two kinds; one change without a stored time.
    const lagsMs = [0, 1, 1.5, 2.5, 7, 10, 49, 50, 51, 999, 1000, 2500, 9999, 10_000, 12_345]
    for (const [i, lag] of lagsMs.entries()) {
      const kind = i % 3 === 0 ? 'chat' : 'leaderboard'
      const stored = i % 4 === 0 ? undefined : 10_000 - lag * 2
      m.push.pushed(kind, 10_000 - lag, stored, 10_000)
      commit.labels(kind).observe(lag / 1000)
      if (stored !== undefined) event.labels(kind).observe((lag * 2) / 1000)
    }
    // Runs of one value (a batch's changes pushed in one millisecond), another, then the first again.
    for (const lag of [49, 49, 49, 1, 1, 10_000, 10_000, 49, 12_345]) {
      m.push.pushed('chat', 10_000 - lag, undefined, 10_000)
      commit.labels('chat').observe(lag / 1000)
    }
    m.ws.sent('{"op":"update","channel":"c"}', 10)
    m.ws.sentOp('update', 5)
    m.ws.sent('{"op":"snapshot","channel":"c"}')
    sent.labels('update').inc(15)
    sent.labels('snapshot').inc(1)
    const ours = (await m.text()).split('\n')
    for (const line of (await reference.metrics()).split('\n')) {
      if (line === '' || line.startsWith('#')) continue
      expect(ours).toContain(line)
    }
    // Read twice: what was counted before the first read is not counted again.
    m.ws.sent('{"op":"update","channel":"c"}', 1)
    expect(await m.text()).toContain('fanfare_ws_messages_sent_total{op="update"} 16')
  })

  test('a push time that cannot be read is not counted (and does not throw into the delivery)', async () => {
    const m = createMetrics()
    m.push.pushed('chat', Number.NaN, Number.NaN, 1_000)
    m.push.pushed('chat', 990, undefined, 1_000)
    const text = await m.text()
    expect(text).toContain('fanfare_commit_to_push_seconds_count{kind="chat"} 1')
    expect(text).toContain('fanfare_commit_to_push_seconds_sum{kind="chat"} 0.01')
    expect(text).not.toContain('fanfare_event_to_push_seconds_count{kind="chat"}')
  })

  test('a released partition leaves the lag gauge', async () => {
    const m = createMetrics()
    const lag = m.worker.lag('chat', 3)
    lag.set(12)
    expect(await m.text()).toContain('fanfare_projection_lag_events{projection="chat",partition="3"} 12')
    lag.remove()
    expect(await m.text()).not.toContain('partition="3"')
  })
})
