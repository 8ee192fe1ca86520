/**
 * `bun bench/after-response-probe.ts [requests] [rounds]`: what an `afterResponse` hook in a route
 * macro costs per request (the auth plugin settles refused batches there). Two Elysia apps, the
 * same POST route with a macro that has a transform, one with an afterResponse hook too; requests
 * go through `app.handle` in-process (no socket), 64 in flight, the sides taking turns.
 */
import { Elysia, t } from 'elysia'

const [requests, rounds] = [Number(process.argv[2] ?? 100_000), Number(process.argv[3] ?? 4)]
const charged = new WeakMap<Request, number>()
const app = (after: boolean) =>
  new Elysia()
    .macro({
      auth: (_: boolean) => ({
        transform: ({ request }: { request: Request }) => void charged.set(request, 1),
        ...(after ? { afterResponse: ({ request }: { request: Request }) => void charged.delete(request) } : {}),
      }),
    })
    .post('/v1/events', ({ body }) => ({ results: body.events.length }), { auth: true, body: t.Object({ events: t.Array(t.Object({ type: t.String() })) }) })
const sides = { without: app(false), with: app(true) }
const body = JSON.stringify({ events: Array.from({ length: 20 }, () => ({ type: 'score.submitted' })) })
async function run(a: { handle: (r: Request) => Promise<Response> }) {
  let next = 0
  const t0 = performance.now()
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      while (next++ < requests) {
        const r = await a.handle(new Request('http://x/v1/events', { method: 'POST', headers: { 'content-type': 'application/json' }, body }))
        await r.arrayBuffer()
      }
    }),
  )
  return requests / ((performance.now() - t0) / 1000)
}
await run(sides.without)
await run(sides.with)
for (let i = 0; i < rounds; i++) {
  for (const [name, a] of Object.entries(sides)) console.log(JSON.stringify({ round: i, side: name, perSecond: Math.round(await run(a)) }))
}
