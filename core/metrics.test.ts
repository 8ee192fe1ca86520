import { describe, expect, test } from 'bun:test'
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

  test('a released partition leaves the lag gauge', async () => {
    const m = createMetrics()
    const lag = m.worker.lag('chat', 3)
    lag.set(12)
    expect(await m.text()).toContain('fanfare_projection_lag_events{projection="chat",partition="3"} 12')
    lag.remove()
    expect(await m.text()).not.toContain('partition="3"')
  })
})
