import { expect, test } from 'bun:test'
import type { Msg } from '@nats-io/transport-node'
import { periodKey } from '../../../core/periods'
import { batchMessageOf } from './batch'
import { deliveryInfoOf, deliveryOf } from './pull-now'

test("a message stored in the last nanoseconds of a day keeps that day as its stored time (the period its score counts in), in both reply layouts", () => {
  // 2025-11-30T23:59:59.9999999Z: as a float (what nats.js' info.timestampNanos holds) this is
  // 1764547200000000000, midnight, and the score counted in December's first day, week and month.
  const nanos = '1764547199999999900'
  for (const reply of [`$JS.ACK.EV.c1.1.42.42.${nanos}.0`, `$JS.ACK._.hash.EV.c1.1.42.42.${nanos}.0.rnd`]) {
    const m = { subject: 'fanfare.ev.0.score.submitted', data: new Uint8Array(), reply, headers: undefined, respond: () => true } as unknown as Msg
    const { storedAt, seq } = batchMessageOf(deliveryOf(m, deliveryInfoOf(reply)!))
    expect([seq, storedAt.toISOString()]).toEqual([42, '2025-11-30T23:59:59.999Z'])
    expect([periodKey('daily', storedAt), periodKey('weekly', storedAt), periodKey('monthly', storedAt)]).toEqual(['2025-11-30', '2025-W48', '2025-11'])
  }
})
