import { describe, expect, test } from 'bun:test'
import { createLiveness } from './liveness'

type Fake = { id: string; heard: number; pings: number }

function setup(...ids: string[]) {
  const sockets = new Map<string, Fake>()
  const closed: string[] = []
  const liveness = createLiveness<Fake>({
    timeoutMs: 8000,
    sockets: () => sockets,
    ping: (s) => void s.pings++,
    close: (s) => {
      closed.push(s.id)
      sockets.delete(s.id)
    },
  })
  for (const id of ids) sockets.set(id, { id, heard: liveness.sweeps, pings: 0 })
  return { sockets, closed, liveness }
}

describe('liveness sweep', async () => {
  test('a silent client is pinged after more than half the timeout and closed after more than the timeout (4 sweeps), never earlier', async () => {
    const { sockets, closed, liveness } = setup('ghost')
    const ghost = sockets.get('ghost')!
    const pingsAt: number[] = []
    for (let sweep = 1; sweep <= 5; sweep++) {
      const before = ghost.pings
      await liveness.sweep()
      if (ghost.pings > before) pingsAt.push(sweep)
      if (sweep < 5) expect(closed).toEqual([])
    }
    // Heard before sweep 1: silent more than 2 intervals at sweep 3, more than 4 at sweep 5.
    expect(pingsAt).toEqual([3, 4])
    expect(closed).toEqual(['ghost'])
    expect(sockets.size).toBe(0)
  })

  test('a client that answers its pings stays however long it sends nothing; one heard from at all is never pinged', async () => {
    const { sockets, closed, liveness } = setup('quiet', 'chatty')
    const quiet = sockets.get('quiet')!
    const chatty = sockets.get('chatty')!
    for (let sweep = 0; sweep < 40; sweep++) {
      const before = quiet.pings
      await liveness.sweep()
      // The pong comes back before the next sweep.
      if (quiet.pings > before) quiet.heard = liveness.sweeps
      chatty.heard = liveness.sweeps
    }
    expect(closed).toEqual([])
    expect(chatty.pings).toBe(0)
    // Pinged once every three sweeps: 40 sweeps, 13 pings.
    expect(quiet.pings).toBe(13)
  })

  test('a pong that comes after the next sweep still keeps the client', async () => {
    const { sockets, closed, liveness } = setup('slow')
    const slow = sockets.get('slow')!
    let pingedAt: number | undefined
    for (let sweep = 0; sweep < 30; sweep++) {
      const before = slow.pings
      await liveness.sweep()
      // The answer to a ping arrives only after the sweep that follows it.
      if (pingedAt !== undefined && liveness.sweeps > pingedAt) {
        slow.heard = liveness.sweeps
        pingedAt = undefined
      } else if (slow.pings > before && pingedAt === undefined) pingedAt = liveness.sweeps
    }
    expect(slow.pings).toBeGreaterThan(5)
    expect(closed).toEqual([])
  })

  test('pings go out 500 per event-loop turn, and one heard from before its turn comes is not pinged', async () => {
    const sockets = new Map<string, Fake>()
    let pings = 0
    const liveness = createLiveness<Fake>({
      timeoutMs: 8000,
      sockets: () => sockets,
      ping: (s) => {
        s.pings++
        pings++
        // A frame from s1100 arrives while the first ones are pinged.
        if (s.id === 's0') sockets.get('s1100')!.heard = liveness.sweeps
      },
      close: () => {},
    })
    for (let i = 0; i < 1200; i++) sockets.set(`s${i}`, { id: `s${i}`, heard: liveness.sweeps, pings: 0 })
    await liveness.sweep()
    await liveness.sweep()
    let firstTurn: number | undefined
    setImmediate(() => (firstTurn = pings))
    const r = await liveness.sweep()
    expect(firstTurn).toBe(500)
    expect(pings).toBe(1199)
    expect(sockets.get('s1100')!.pings).toBe(0)
    expect(r.pinged).toBe(1200)
  })
})
