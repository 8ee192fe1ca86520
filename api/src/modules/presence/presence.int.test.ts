import { afterAll, beforeAll, expect, test } from 'bun:test'
import { startTestNode, type TestNode } from '../../test-support'

let node: TestNode
beforeAll(async () => {
  node = await startTestNode()
})
afterAll(async () => {
  await node?.close()
})

test('GET /v1/presence of a channel without presence says which channels have it, not the pattern', async () => {
  for (const channel of ['leaderboard:arena', 'room:lobby', 'chat:a.b']) {
    const r = await fetch(`${node.base}/v1/presence/${channel}`)
    const body = (await r.json()) as { error: { code: string; message: string; details: { path: string }[] } }
    expect([channel, r.status, body.error.code, body.error.details[0]?.path]).toEqual([channel, 422, 'invalid_request', '/channel'])
    expect(body.error.message).toBe('channel must be chat:<room>, stream:<stream> or match:<match> (a name of 1-64 letters, digits, _ or -): presence is kept for these')
  }
  const ok = await fetch(`${node.base}/v1/presence/chat:lobby`)
  expect([ok.status, ((await ok.json()) as { channel: string }).channel]).toEqual([200, 'chat:lobby'])
})
