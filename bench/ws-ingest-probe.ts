/**
 * `bun bench/ws-ingest-probe.ts [rate] [rounds] [seconds] [sides]`: the fixed-rate phases of bench/e2e.ts
 * at one rate (default 20,000 events/s) with Fanfare over REST and over WebSocket taking turns (the
 * bare pipeline first in each round), and the CPU time each process spent per phase: this process
 * (load clients and the subscriber), the API node and the worker. Shows whether the WebSocket
 * figures are the server's or the load client's. `sides`: which to run, default `bare,rest,ws,wsbun`
 * (`wsbun`: the same WebSocket load through Bun's WebSocket client, a write and a timer per frame,
 * which is what bench/e2e.ts used before)
 * (one side alone, with FANFARE_BENCH_PROFILE set, profiles the API node under that path only).
 */
import { cpuOf } from './lib/child'
import { scoreEvent } from './lib/events'
import { counted, openRig, phase, rawSender, restSender, wsSender } from './e2e'

const [rate, rounds, seconds] = [Number(process.argv[2] ?? 20_000), Number(process.argv[3] ?? 3), Number(process.argv[4] ?? 5)]
const sides = (process.argv[5] ?? 'bare,rest,ws,wsbun').split(',') as ('bare' | 'rest' | 'ws' | 'wsbun')[]
/** bench/e2e.ts's WebSocket sender as it was: Bun's WebSocket, one write and one 30 s timer per frame. */
async function bunWsSender(port: number, token: string, sockets = 4) {
  const waiting = new Map<string, (ok: boolean) => void>()
  const conns = await Promise.all(
    Array.from({ length: sockets }, async () => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/ws?token=${token}`)
      await new Promise<void>((ok, fail) => ((ws.onopen = () => ok()), (ws.onerror = () => fail(new Error('ws publisher could not connect')))))
      ws.onmessage = (e) => {
        const f = JSON.parse(String(e.data))
        waiting.get(f.ref)?.(f.op === 'ack')
        waiting.delete(f.ref)
      }
      return ws
    }),
  )
  let k = 0
  let runs = 0
  return async (n: number) => {
    const run = `b${Date.now().toString(36)}${runs++}`
    const acks = Array.from({ length: n }, (_, i) => {
      const ref = `${run}-${i}`
      conns[k++ % conns.length].send(JSON.stringify({ op: 'publish', ref, event: scoreEvent(run, i) }))
      return new Promise<boolean>((ok) => {
        waiting.set(ref, ok)
        setTimeout(() => waiting.get(ref) === ok && (waiting.delete(ref), ok(false)), 30_000)
      })
    })
    return (await Promise.all(acks)).filter(Boolean).length
  }
}

const rig = await openRig()
const { fan, bare, api, fanSub, bareSub, fanRows, bareRows } = rig
try {
  const token = fan.env.vars.FANFARE_INGEST_TOKEN
  const rest = counted(restSender(api, token))
  const ws = await wsSender(api.port, token)
  const wsbun = await bunWsSender(api.port, token)
  const sends = { bare: rawSender(bare), rest, ws: counted(ws.send), wsbun: counted(wsbun) }
  const fanBefore = { rows: 0 }
  const bareBefore = { rows: 0 }
  const worker = fan.workers[0].proc.pid
  const cpu = () => {
    const me = process.cpuUsage()
    return { me: (me.user + me.system) / 1e6, api: cpuOf(api.proc.proc.pid), worker: cpuOf(worker) }
  }
  for (const side of sides) {
    await phase(sends[side], side === 'bare' ? bareSub : fanSub, side === 'bare' ? bareRows : fanRows, { rate: rate / 10, seconds: 1 }, side === 'bare' ? bareBefore : fanBefore)
  }
  for (let r = 0; r < rounds; r++) {
    // The Fanfare sides take turns going first.
    const fanfare = sides.filter((s) => s !== 'bare')
    const order = [...sides.filter((s) => s === 'bare'), ...(r % 2 ? fanfare.reverse() : fanfare)]
    for (const side of order) {
      const c0 = cpu()
      const x = await phase(sends[side], side === 'bare' ? bareSub : fanSub, side === 'bare' ? bareRows : fanRows, { rate, seconds }, side === 'bare' ? bareBefore : fanBefore)
      const c1 = cpu()
      const per1k = (k: 'me' | 'api' | 'worker') => (((c1[k] - c0[k]) * 1000) / x.accepted) * 1000
      const load = (await Bun.file('/proc/loadavg').text()).trim()
      console.log(
        `round ${r + 1} ${side.padEnd(4)}: ${Math.round(x.acceptedPerSec)} accepted/s, p50 / p99 ${x.latency.p50.toFixed(1)} / ${x.latency.p99.toFixed(1)} ms, ` +
          `${x.latency.count}/${x.accepted}; CPU ms per 1,000 events: bench ${per1k('me').toFixed(1)}, api ${per1k('api').toFixed(1)}, worker ${per1k('worker').toFixed(1)}; load ${load}`,
      )
    }
  }
  ws.close()
  fanSub.close()
  bareSub.close()
} finally {
  await rig.close()
}
