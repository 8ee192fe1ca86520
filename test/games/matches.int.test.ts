import { afterEach, describe, expect, test } from 'bun:test'
import { jetstream } from '@nats-io/jetstream'
import { asc, eq } from 'drizzle-orm'
import { mintUserToken } from '../../api/src/auth/mint'
import { createHarness, waitRebuild, type ApiHarness } from '../../api/src/test-support'
import type { MatchChange, UserChange } from '../../core/channels'
import { deadLetters, eventOutbox, leaderboardEntries, matches } from '../../core/db/schema'
import { until } from '../../core/testing/wait'
import type { RunnerHooks } from '../../stream-workers/src/runtime/runner'
import { byChannel, publishEvent, readNotices, startTestWorker, storedEvent, untilCaughtUp, type World } from '../../stream-workers/src/testing/harness'

let h: ApiHarness | undefined
const closers: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const close of closers.splice(0)) await close().catch(() => {})
  await h?.close()
  h = undefined
})

async function setup(overrides: Record<string, string> = {}, hooks?: RunnerHooks) {
  const hh = (h = await createHarness({ FANFARE_PARTITIONS: '3', FANFARE_LEASE_TTL_MS: '1500', FANFARE_BATCH_SIZE: '5', ...overrides }))
  const worker = await startTestWorker(hh.env, hooks ? { hooks } : {})
  closers.push(() => worker.stop())
  const token = (sub: string) => mintUserToken(hh.env.vars.FANFARE_JWT_SECRET, { sub })
  /** POSTs events; expects them accepted (202). */
  const post = async (events: unknown[], as: string = hh.ingestToken) => {
    const r = await hh.call('POST', '/v1/events', { token: as, body: { events } })
    expect(r.status).toBe(202)
    return r.json
  }
  const caughtUp = () => untilCaughtUp({ config: hh.env.config, db: hh.database.db, nc: hh.nc })
  const world = { nc: hh.nc, js: jetstream(hh.nc), config: hh.env.config } as unknown as World
  const notices = async () => byChannel(await readNotices(world))
  return { hh, worker, token, post, caughtUp, notices, world }
}

describe('matches through the API and the projection', () => {
  test('every transition and refusal: REST, match:<id> and each player\'s user:<sub> agree; impossible transitions are dead letters', async () => {
    const { hh, token, post, caughtUp, notices } = await setup()
    const users = Object.fromEntries(await Promise.all(['ann', 'bob', 'cat', 'dan'].map(async (u) => [u, await token(u)] as const)))
    await post([{ type: 'match.created', data: { match: 'm1', mode: 'duel', maxPlayers: 2, properties: { map: 'dust' } } }])
    // Before it exists: unknown_match.
    await post([{ type: 'match.join', data: { match: 'ghost' } }], users.dan)
    await post([{ type: 'match.join', data: { match: 'm1' } }], users.ann)
    await post([{ type: 'match.join', data: { match: 'm1' } }], users.ann) // already_joined
    await post([{ type: 'match.join', data: { match: 'm1' } }], users.bob) // the last seat: full
    await post([{ type: 'match.join', data: { match: 'm1' } }], users.cat) // full
    await caughtUp()
    expect((await hh.call('GET', '/v1/matches/m1', { token: users.dan })).json).toMatchObject({ status: 'full', players: [{ player: 'ann' }, { player: 'bob' }] })
    await post([{ type: 'match.leave', data: { match: 'm1' } }], users.bob) // bob leaves (the player is the token's sub)
    await post([{ type: 'match.join', data: { match: 'm1' } }], users.cat) // open again: cat gets bob's seat
    await post([{ type: 'match.ready', data: { match: 'm1' } }], users.ann)
    await post([{ type: 'match.finish', data: { match: 'm1', results: [{ player: 'ann', score: 1 }] } }]) // not started: refused
    await post([{ type: 'match.start', data: { match: 'm1' } }])
    await post([{ type: 'match.join', data: { match: 'm1' } }], users.dan) // started
    await post([{ type: 'match.finish', data: { match: 'm1', results: [{ player: 'ann', score: 3 }, { player: 'cat', score: 9 }] } }])
    await post([{ type: 'match.join', data: { match: 'm1' } }], users.bob) // finished
    await post([{ type: 'match.created', data: { match: 'm2', mode: 'duel', maxPlayers: 3 } }, { type: 'match.abort', data: { match: 'm2' } }])
    await post([{ type: 'match.join', data: { match: 'm2' } }], users.dan) // aborted
    await post([{ type: 'match.finish', data: { match: 'm2', results: [{ player: 'dan', score: 1 }] } }]) // aborted: refused, never dropped unseen
    await post([{ type: 'match.abort', data: { match: 'm1' } }]) // finished: refused
    await post([{ type: 'match.start', data: { match: 'nope' } }]) // unknown: refused
    await caughtUp()

    const m1 = (await hh.call('GET', '/v1/matches/m1', { token: users.dan })).json
    expect(m1).toMatchObject({
      match: 'm1',
      mode: 'duel',
      status: 'finished',
      maxPlayers: 2,
      properties: { map: 'dust' },
      // Joined over REST and never subscribed to match:m1: not yet connected (the join grace ended with the match).
      players: [
        { player: 'ann', ready: true, connected: false },
        { player: 'cat', ready: false, connected: false },
      ],
      results: [
        { player: 'cat', score: 9, rank: 1 },
        { player: 'ann', score: 3, rank: 2 },
      ],
    })
    expect((await hh.call('GET', '/v1/matches/ghost', { token: users.dan })).status).toBe(404)
    expect((await hh.call('GET', '/v1/matches?status=aborted', { token: users.dan })).json).toEqual({
      matches: [{ match: 'm2', mode: 'duel', status: 'aborted', maxPlayers: 3, players: 0, createdAt: expect.any(String) }],
      next: null,
    })

    // The lobby browser: open matches of any mode, oldest first, page by page; and of one mode.
    await post(['x1', 'x2', 'x3'].map((match, i) => ({ type: 'match.created', data: { match, mode: i === 1 ? 'solo' : 'duel', maxPlayers: 4 } })))
    await post([{ type: 'match.join', data: { match: 'x3' } }], await token('eve'))
    await caughtUp()
    const pages: any[] = []
    for (let after: string | null | undefined; after !== null; ) {
      const page = (await hh.call('GET', `/v1/matches?limit=2${after ? `&after=${after}` : ''}`, { token: users.dan })).json
      pages.push(page.matches.map((m: any) => `${m.match}:${m.players}`))
      after = page.next
    }
    expect(pages).toEqual([['x1:0', 'x2:0'], ['x3:1']])
    expect((await hh.call('GET', '/v1/matches?status=open&mode=duel', { token: users.dan })).json.matches.map((m: any) => m.match)).toEqual(['x1', 'x3'])
    expect((await hh.call('GET', '/v1/matches?after=zz', { token: users.dan })).status).toBe(422)
    // A status that is none of them is named with the ones there are (not "Expected 'open'").
    const badStatus = await hh.call('GET', '/v1/matches?status=bogus', { token: users.dan })
    expect([badStatus.status, badStatus.json.error.code]).toEqual([422, 'invalid_request'])
    expect(badStatus.json.error.message).toBe('status must be one of open, full, started, finished, aborted')

    const n = await notices()
    const onMatch = n.get('match:m1')!.map((x) => x.data as MatchChange)
    expect(onMatch.map((c) => ('player' in c ? `${c.kind}:${c.player}${'reason' in c ? `:${c.reason}` : ''}` : c.kind))).toEqual([
      'created',
      'joined:ann',
      'rejected:ann:already_joined',
      'joined:bob',
      'rejected:cat:full',
      'left:bob:left',
      'joined:cat',
      'ready:ann',
      'started',
      'rejected:dan:started',
      'finished',
      'rejected:bob:finished',
    ])
    expect(n.get('match:m1')!.map((x) => x.version)).toEqual(onMatch.map((_, i) => i + 1))
    const decisions = (u: string) => (n.get(`user:${u}`) ?? []).map((x) => x.data as UserChange).map((d) => `${d.match}:${d.accepted ? 'accepted' : d.reason}`)
    expect(decisions('ann')).toEqual(['m1:accepted', 'm1:already_joined'])
    expect(decisions('bob')).toEqual(['m1:accepted', 'm1:finished'])
    expect(decisions('cat')).toEqual(['m1:full', 'm1:accepted'])
    // Decisions of different matches are decided by their own (independent) partitions: no order
    // between them on the user's channel, only within one match.
    expect(decisions('dan').sort()).toEqual(['ghost:unknown_match', 'm1:started', 'm2:aborted'])
    const dead = await hh.database.db.select().from(deadLetters).orderBy(asc(deadLetters.streamSeq))
    expect(dead.map((d) => [d.projection, d.reason])).toEqual([
      ['matches', 'match "m1" is full: only a started match finishes'],
      ['matches', 'match "m2" is aborted: only a started match finishes'],
      ['matches', 'match "m1" is finished: it cannot be aborted'],
      ['matches', 'no match "nope"'],
    ])
    // Users cannot create or finish matches; keys without the scope neither.
    const byPlayer = await hh.call('POST', '/v1/events', { token: users.ann, body: { events: [{ type: 'match.finish', data: { match: 'm1', results: [{ player: 'ann', score: 99 }] } }] } })
    // The refusal says who may: a game server's key with the scope.
    expect([byPlayer.status, byPlayer.json.error.code, byPlayer.json.error.message]).toEqual([403, 'forbidden', 'this user may not publish match.finish: only keys with the scope publish:match.finish (or publish:*) may'])
  }, 60_000)

  test("a player leaves as themselves: a user's leave naming another player (or the API nodes' reason) is 403 and changes nothing, never applied as the sender's own leave", async () => {
    const { hh, token, post, caughtUp } = await setup()
    const [ann, bob] = await Promise.all([token('ann'), token('bob')])
    await post([{ type: 'match.created', data: { match: 'k1', mode: 'duel', maxPlayers: 2 } }])
    await post([{ type: 'match.join', data: { match: 'k1' } }], ann)
    await post([{ type: 'match.join', data: { match: 'k1' } }], bob)
    await caughtUp()
    const stored = await hh.streamCount()
    for (const data of [{ match: 'k1', player: 'ann' }, { match: 'k1', player: 'ann', reason: 'disconnected' }, { match: 'k1', reason: 'disconnected' }, { match: 'k1', reason: 'revoked' }]) {
      const r = await hh.call('POST', '/v1/events', { token: bob, body: { type: 'match.leave', data } })
      expect([r.status, r.json.error?.code]).toEqual([403, 'forbidden'])
      // Said of what was sent: another player's seat, or a reason that is the API nodes' (not someone else's seat).
      expect(r.json.error.message).toBe(
        'player' in data
          ? "a player leaves a match as themselves (bob): another player's seat is given up only by the API nodes, after its grace"
          : `a player leaves a match as themselves (bob), with no reason or "left": "${data.reason}" is the API nodes' to give`,
      )
    }
    expect(await hh.streamCount()).toBe(stored)
    await caughtUp()
    // Both keep their seats: bob's bad request did not give up his own.
    expect((await hh.call('GET', '/v1/matches/k1', { token: ann })).json.players.map((p: { player: string }) => p.player)).toEqual(['ann', 'bob'])
    // Naming themselves is fine.
    await post([{ type: 'match.leave', data: { match: 'k1', player: 'bob', reason: 'left' } }], bob)
    await caughtUp()
    expect((await hh.call('GET', '/v1/matches/k1', { token: ann })).json.players.map((p: { player: string }) => p.player)).toEqual(['ann'])
  })

  test('match property names that are JavaScript object internals (__proto__, constructor, prototype), or outside the name rule, are 422 invalid_event and store nothing; stored before, the match applies without them', async () => {
    const { hh, post, caughtUp, notices, world } = await setup()
    for (const name of ['__proto__', 'constructor', 'prototype']) {
      // Raw JSON: a JS literal { __proto__: ... } would set the prototype, not a key.
      const body = `{"events":[{"type":"match.created","data":{"match":"p1","mode":"duel","maxPlayers":2,"properties":{"map":"dust","${name}":"x"}}}]}`
      const r = await hh.call('POST', '/v1/events', { token: hh.ingestToken, body })
      expect([r.status, r.json.error.code, r.json.error.details?.[0]?.path]).toEqual([422, 'invalid_event', `/data/properties/${name}`])
    }
    // Names outside the rule (whose values the schema never checked: any JSON passed).
    for (const name of ['a.b', 'with space', '', 'k'.repeat(65)]) {
      const r = await hh.call('POST', '/v1/events', { token: hh.ingestToken, body: { events: [{ type: 'match.created', data: { match: 'p1', mode: 'duel', maxPlayers: 2, properties: { [name]: { deep: ['x'] } } } }] } })
      expect([r.status, r.json.error.code, r.json.error.details?.[0]?.path, r.json.error.message]).toEqual([422, 'invalid_event', `/data/properties/${name}`, expect.stringContaining('property names must be 1-64 characters')])
    }
    expect(await hh.streamCount()).toBe(0)
    // Names merely close to them are fine, and come back as sent.
    await post([{ type: 'match.created', data: { match: 'p1', mode: 'duel', maxPlayers: 2, properties: { proto: 1, Constructor: true, _prototype_: 'y' } } }])
    await caughtUp()
    expect((await hh.call('GET', '/v1/matches/p1', { token: hh.ingestToken })).json.properties).toEqual({ proto: 1, Constructor: true, _prototype_: 'y' })
    // One stored before the rule still applies, without the name: REST and the channel agree.
    await publishEvent(world, storedEvent('match.created', JSON.parse('{"match":"old","mode":"duel","maxPlayers":2,"properties":{"__proto__":"x","map":"dust","a.b":{"deep":["x"]}}}')))
    await caughtUp()
    expect((await hh.call('GET', '/v1/matches/old', { token: hh.ingestToken })).json.properties).toEqual({ map: 'dust' })
    const created = (await notices()).get('match:old')![0].data as Extract<MatchChange, { kind: 'created' }>
    expect(Object.keys(created.match.properties!)).toEqual(['map'])
  })

  test("results reach the mode's board once: a resent finish, a second finish, a crash before the ack (the outbox sweeper publishes); a rebuild reproduces the matches and scores nothing again", async () => {
    let crashes = 0
    const { hh, token, post, caughtUp } = await setup({}, {
      onBeforeAck: ({ projection }) => {
        // The finishes' batch commits, then the worker "dies" before acking and publishing it.
        if (projection === 'matches' && crashes < 3) {
          crashes++
          throw new Error('simulated crash before ack')
        }
      },
    })
    // A `sum` board: a result applied twice would show.
    expect((await hh.call('PUT', '/admin/leaderboards/arena', { token: hh.adminToken, body: { operator: 'sum' } })).status).toBe(200)
    expect((await hh.call('PUT', '/admin/modes/ranked', { token: hh.adminToken, body: { board: 'arena' } })).json).toMatchObject({ mode: 'ranked', board: 'arena' })
    expect((await hh.call('GET', '/admin/modes', { token: hh.adminToken })).json.modes).toEqual([{ mode: 'ranked', board: 'arena', updatedAt: expect.any(String) }])
    const oracle = new Map<string, number>()
    for (let m = 0; m < 6; m++) {
      const players = [`p${m}`, `p${m + 1}`, `p${m + 2}`]
      await post([{ id: `create-${m}`, type: 'match.created', data: { match: `r${m}`, mode: m === 5 ? 'casual' : 'ranked', maxPlayers: 3 } }])
      for (const p of players) await post([{ type: 'match.join', data: { match: `r${m}` } }], await token(p))
      const results = players.map((player, i) => ({ player, score: 10 * (m + 1) + i }))
      const finish = { id: `finish-${m}`, type: 'match.finish', data: { match: `r${m}`, results } }
      await post([{ type: 'match.start', data: { match: `r${m}` } }, finish])
      // The same finish sent again (de-duplicated by id) and a second finish (ignored).
      const again = await post([finish, { type: 'match.finish', data: { match: `r${m}`, results: players.map((player) => ({ player, score: 1000 })) } }])
      expect(again.results[0].duplicate).toBe(true)
      if (m !== 5) for (const r of results) oracle.set(r.player, (oracle.get(r.player) ?? 0) + r.score)
    }
    await caughtUp()
    await until('the outbox to be drained and the scores applied', async () => (await hh.database.db.select().from(eventOutbox)).length === 0 && (await caughtUp()), 20_000)
    await caughtUp()
    expect(crashes).toBe(3)
    const scores = async () => new Map((await hh.database.db.select().from(leaderboardEntries).where(eq(leaderboardEntries.board, 'arena'))).map((r) => [r.player, r.score]))
    expect(await scores()).toEqual(oracle)
    expect((await hh.call('GET', '/v1/matches/r5', { token: await token('x') })).json).toMatchObject({ status: 'finished' })

    // Rebuild the matches: the same rows; no score is derived again.
    const live = await hh.database.db.select().from(matches).orderBy(asc(matches.match))
    expect((await hh.call('POST', '/admin/projections/matches/rebuild', { token: hh.adminToken })).status).toBe(202)
    await waitRebuild(hh, 'matches')
    expect(await hh.database.db.select().from(matches).orderBy(asc(matches.match))).toEqual(live)
    await Bun.sleep(2500)
    await caughtUp()
    expect(await hh.database.db.select().from(eventOutbox)).toEqual([])
    expect(await scores()).toEqual(oracle)
  }, 90_000)

  test("a finish scores only the lineup (a leaver's loss included); players who never held a seat are ignored, shown on the match, and stay off the board through rebuilds", async () => {
    const { hh, token, post, caughtUp } = await setup()
    expect((await hh.call('PUT', '/admin/leaderboards/arena', { token: hh.adminToken, body: { operator: 'sum' } })).status).toBe(200)
    expect((await hh.call('PUT', '/admin/modes/ranked', { token: hh.adminToken, body: { board: 'arena' } })).status).toBe(200)
    await post([{ type: 'match.created', data: { match: 'l1', mode: 'ranked', maxPlayers: 3 } }])
    for (const p of ['ann', 'lob', 'bob']) await post([{ type: 'match.join', data: { match: 'l1' } }], await token(p))
    await post([{ type: 'match.leave', data: { match: 'l1' } }], await token('lob')) // left the lobby: never played
    await post([{ type: 'match.start', data: { match: 'l1' } }])
    await post([{ type: 'match.leave', data: { match: 'l1' } }], await token('bob')) // rage quit: his loss counts
    // A key with publish:match.finish (not score.submitted) naming a stranger and the lobby leaver.
    await post([{ type: 'match.finish', data: { match: 'l1', results: [{ player: 'mallory', score: 1e6 }, { player: 'ann', score: 30 }, { player: 'lob', score: 500 }, { player: 'bob', score: -5 }] } }])
    await caughtUp()
    await until('the outbox to be drained and the scores applied', async () => (await hh.database.db.select().from(eventOutbox)).length === 0 && (await caughtUp()), 20_000)
    await caughtUp()
    const board = async () => new Map((await hh.database.db.select().from(leaderboardEntries).where(eq(leaderboardEntries.board, 'arena'))).map((r) => [r.player, r.score]))
    expect(await board()).toEqual(new Map([['ann', 30], ['bob', -5]]))
    const m = (await hh.call('GET', '/v1/matches/l1', { token: await token('x') })).json
    expect(m).toMatchObject({ status: 'finished', results: [{ player: 'ann', score: 30, rank: 1 }, { player: 'bob', score: -5, rank: 2 }], ignored: ['mallory', 'lob'] })
    expect(m.players.map((p: any) => p.player)).toEqual(['ann'])
    expect(await hh.database.db.select().from(deadLetters)).toEqual([])

    // Rebuilds decide the same: the match's row, and the board rebuilt from the stream.
    const rebuild = async (name: string) => {
      expect((await hh.call('POST', `/admin/projections/${name}/rebuild`, { token: hh.adminToken })).status).toBe(202)
      await waitRebuild(hh, name)
    }
    const live = await hh.database.db.select().from(matches).orderBy(asc(matches.match))
    await rebuild('matches')
    expect(await hh.database.db.select().from(matches).orderBy(asc(matches.match))).toEqual(live)
    await rebuild('leaderboards')
    expect(await board()).toEqual(new Map([['ann', 30], ['bob', -5]]))
  }, 90_000)
})
