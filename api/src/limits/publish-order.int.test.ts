import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { WsClient } from '../../../test/e2e/harness'
import { startTestNode, type TestNode } from '../test-support'

/** A connection's order through a 503, on a real API node: the same hold as through a rate refusal. */
describe('publish order through a 503', () => {
  let node: TestNode
  beforeAll(async () => {
    // The lowest queue a node may have: one socket pipelining more than it fills it.
    node = await startTestNode({ FANFARE_INGEST_MAX_IN_FLIGHT: '500' })
  })
  afterAll(async () => {
    await node?.close()
  })

  test('events pipelined behind one refused overloaded wait for it, then all are stored in send order', async () => {
    const c = await WsClient.open(`${node.wsUrl}?token=${node.env.vars.FANFARE_INGEST_TOKEN}`)
    const N = 1800
    const chat = (i: number) => ({ id: `o-${i}`, type: 'chat.message.posted', data: { room: 'order', user: 'u', text: `${i}` } })
    // Sent in bursts, as a busy client's frames arrive: the queue drains between them.
    for (let i = 0; i < N; i++) {
      c.send({ op: 'publish', ref: `p${i}`, event: chat(i) })
      if (i % 600 === 599) await Bun.sleep(20)
    }
    const answers = await Promise.all(Array.from({ length: N }, (_, i) => c.reply(`p${i}`, 30_000)))
    const first = answers.findIndex((a) => a.op === 'error')
    expect(first).toBeGreaterThan(0) // the queue filled: the test means something
    expect(answers[first].error.code).toBe('overloaded')
    // Nothing sent after the refused event was stored before it: every later one is refused too,
    // naming the one that goes first.
    const overtaking = answers.slice(first + 1).filter((a) => a.op === 'ack').map((a) => a.id)
    expect(overtaking).toEqual([])
    expect(answers[first + 1].error.message).toContain(`(o-${first}) was refused (overloaded)`)
    // Every event answered 503 is counted as refused, those held behind the first too.
    const refusedNow = answers.filter((a) => a.op === 'error' && a.error.code === 'overloaded').length
    const metrics = await (await fetch(`${node.base}/metrics`, { headers: { authorization: `Bearer ${node.env.vars.FANFARE_ADMIN_TOKEN}` } })).text()
    expect(metrics).toContain(`fanfare_events_refused_total{code="overloaded"} ${refusedNow}`)

    // Sent again in order (as the SDK does, a window at a time), everything is stored in send order.
    let next = first
    for (let round = 0; next < N && round < 100; round++) {
      await Bun.sleep(50)
      const upTo = Math.min(N, next + 200)
      for (let i = next; i < upTo; i++) c.send({ op: 'publish', ref: `r${round}-${i}`, event: chat(i) })
      const again = await Promise.all(Array.from({ length: upTo - next }, (_, k) => c.reply(`r${round}-${next + k}`, 30_000)))
      const refused = again.findIndex((a) => a.op === 'error')
      next = refused < 0 ? upTo : next + refused
    }
    expect(next).toBe(N)
    const stored = (await node.streamEvents()).filter((e) => e.id.startsWith('o-')).map((e) => Number(e.id.slice(2)))
    expect(stored).toEqual(Array.from({ length: N }, (_, i) => i))
    c.close()
  }, 60_000)
})
