import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { channelVersions, leaderboardEntries, leaderboards } from '../../../../core/db/schema'
import { createHarness, type ApiHarness } from '../../test-support'
import { MAX_OFFSET } from './model'
import { leaderboardPage, leaderboardSnapshot, RESERVE_SIZE, SNAPSHOT_SIZE } from './service'
import { sql } from 'drizzle-orm'
import { rowsOf } from '../../../../core/db/client'

describe('leaderboard reads', () => {
  let h: ApiHarness
  beforeAll(async () => {
    h = await createHarness()
    const db = h.database.db
    // Read models are the workers' job; here we write rows directly.
    await db.insert(leaderboardEntries).values([
      { board: 'hi', player: 'carol', score: 50, reachedSeq: 3 },
      { board: 'hi', player: 'alice', score: 100, reachedSeq: 7 },
      { board: 'hi', player: 'bob', score: 100, reachedSeq: 2 }, // same score, reached earlier: ranks first
      { board: 'hi', player: 'dave', score: 50, reachedSeq: 3 }, // same score and seq as carol: by player id
      { board: 'hi', player: 'erin', score: 10, reachedSeq: 1 },
      { board: 'golf', player: 'x', score: 72, reachedSeq: 1 },
      { board: 'golf', player: 'y', score: 68, reachedSeq: 2 },
      { board: 'golf', player: 'z', score: 80, reachedSeq: 3 },
    ])
    await db.insert(leaderboards).values({ board: 'golf', sortOrder: 'asc', operator: 'latest' })
    await db.insert(channelVersions).values({ channel: 'leaderboard:hi', version: 42 })
  })
  afterAll(async () => {
    await h.close()
  })

  test('desc board ranks by score, then reachedSeq, then player', async () => {
    const r = await h.call('GET', '/v1/leaderboards/hi')
    expect(r.status).toBe(200)
    expect(r.json).toEqual({
      board: 'hi',
      order: 'desc',
      operator: 'best',
      reset: 'none',
      period: null,
      entries: [
        { rank: 1, player: 'bob', score: 100 },
        { rank: 2, player: 'alice', score: 100 },
        { rank: 3, player: 'carol', score: 50 },
        { rank: 4, player: 'dave', score: 50 },
        { rank: 5, player: 'erin', score: 10 },
      ],
      next: null,
    })
  })

  test('asc board ranks lowest first and reports its config', async () => {
    const r = await h.call('GET', '/v1/leaderboards/golf')
    expect(r.json.order).toBe('asc')
    expect(r.json.operator).toBe('latest')
    expect(r.json.entries.map((e: any) => e.player)).toEqual(['y', 'x', 'z'])
  })

  test('limit and offset page with absolute ranks', async () => {
    const r = await h.call('GET', '/v1/leaderboards/hi?limit=2&offset=2')
    expect(r.json.entries).toEqual([
      { rank: 3, player: 'carol', score: 50 },
      { rank: 4, player: 'dave', score: 50 },
    ])
  })

  test('unknown board is empty, bad query is 422', async () => {
    const r = await h.call('GET', '/v1/leaderboards/nobody-plays')
    expect(r.status).toBe(200)
    expect(r.json.entries).toEqual([])
    for (const q of ['limit=0', 'limit=101', 'offset=-1', 'limit=abc', 'limit=1&limit=2', 'limit=2&limit=2']) {
      const bad = await h.call('GET', `/v1/leaderboards/hi?${q}`)
      expect(bad.status).toBe(422)
      expect(bad.json.error.code).toBe('invalid_request')
    }
    const badName = await h.call('GET', '/v1/leaderboards/bad%20name')
    expect(badName.status).toBe(422)
  })

  test('offset is capped at MAX_OFFSET: past it is 422 naming offset, never a 500', async () => {
    expect((await h.call('GET', `/v1/leaderboards/hi?offset=${MAX_OFFSET}`)).status).toBe(200)
    for (const q of [`offset=${MAX_OFFSET + 1}`, 'offset=100000000000000000000']) {
      const r = await h.call('GET', `/v1/leaderboards/hi?${q}`)
      expect([q, r.status, r.json.error?.code]).toEqual([q, 422, 'invalid_request'])
      expect(r.json.error.message).toContain('offset')
    }
  })

  test('`after` pages by key from the `next` of the previous page, with absolute ranks, for both orders', async () => {
    for (const [board, expected] of [
      ['hi', ['bob', 'alice', 'carol', 'dave', 'erin']],
      ['golf', ['y', 'x', 'z']],
    ] as const) {
      const seen: { rank: number; player: string }[] = []
      let next: string | null = null
      let pages = 0
      do {
        const r: { status: number; json: any } = await h.call('GET', `/v1/leaderboards/${board}?limit=2${next ? `&after=${next}` : ''}`)
        expect(r.status).toBe(200)
        seen.push(...r.json.entries.map((e: any) => ({ rank: e.rank, player: e.player })))
        next = r.json.next
        pages++
      } while (next !== null && pages < 10)
      expect(seen).toEqual(expected.map((player, i) => ({ rank: i + 1, player })))
      // A page that ends the board says so: no cursor to an empty page.
      expect(pages).toBe(Math.ceil(expected.length / 2))
    }
    // The last page is not full and has no next; a full page that ends the board neither.
    expect((await h.call('GET', '/v1/leaderboards/hi?limit=5')).json.next).toBeNull()
    expect((await h.call('GET', '/v1/leaderboards/hi?limit=4')).json.next).toEqual(expect.any(String))
  })

  test('a bad, foreign or combined cursor is 422 naming after', async () => {
    const first = await h.call('GET', '/v1/leaderboards/hi?limit=2')
    const cursor = first.json.next as string
    for (const q of ['after=nonsense', `after=${cursor.slice(0, -2)}`, 'after=' + Buffer.from('[1,2]').toString('base64url'), `after=${cursor}&offset=2`]) {
      const r = await h.call('GET', `/v1/leaderboards/hi?${q}`)
      expect([q, r.status, r.json.error?.code]).toEqual([q, 422, 'invalid_request'])
      expect(r.json.error.message).toContain('after')
    }
    // A cursor of another board would give wrong ranks: refused.
    const foreign = await h.call('GET', `/v1/leaderboards/golf?after=${cursor}`)
    expect([foreign.status, foreign.json.error?.code]).toEqual([422, 'invalid_request'])
     // Forged cursors of this board: a player or period Postgres cannot take (NUL) was a 500; a
    // period the board does not have (hi has no periods) answered for that period.
    const [, score, seq, player, rank] = JSON.parse(Buffer.from(cursor, 'base64url').toString())
    for (const forged of [['hi', score, seq, 'a\u0000b', rank, ''], ['hi', score, seq, player, rank, '\u0000'], ['hi', score, seq, player, rank, '2030-01-01'], ['hi', score, seq, player, rank, 'current']]) {
      const r = await h.call('GET', `/v1/leaderboards/hi?after=${Buffer.from(JSON.stringify(forged)).toString('base64url')}`)
      expect([forged, r.status, r.json.error?.code]).toEqual([forged, 422, 'invalid_request'])
      expect(r.json.error.details[0].path).toBe('/after')
    }
  })

  test('a forged cursor with a rank no board can reach is 422 naming after, never a page of inexact ranks', async () => {
    const first = await h.call('GET', '/v1/leaderboards/hi?limit=2')
    const [, score, seq, player] = JSON.parse(Buffer.from(first.json.next, 'base64url').toString())
    // Safe integers all, yet 2^53 - 2 + 1, + 2 ... are not: the page numbered its entries 2^53, 2^53, 2^53 + 2.
    for (const rank of [Number.MAX_SAFE_INTEGER - 1, Number.MAX_SAFE_INTEGER, 2 ** 48 + 1]) {
      const forged = ['hi', score, seq, player, rank, '']
      const r = await h.call('GET', `/v1/leaderboards/hi?limit=3&after=${Buffer.from(JSON.stringify(forged)).toString('base64url')}`)
      expect([rank, r.status, r.json.error?.code, r.json.error?.details?.[0]?.path]).toEqual([rank, 422, 'invalid_request', '/after'])
    }
    // The deepest rank a cursor may carry still numbers its page exactly.
    const deepest = ['hi', score, seq, player, 2 ** 48, '']
    const r = await h.call('GET', `/v1/leaderboards/hi?limit=3&after=${Buffer.from(JSON.stringify(deepest)).toString('base64url')}`)
    expect(r.status).toBe(200)
    expect(r.json.entries.map((e: { rank: number }) => e.rank)).toEqual([2 ** 48 + 1, 2 ** 48 + 2, 2 ** 48 + 3])
  })

  test("a player's rank with neighbours", async () => {
    const r = await h.call('GET', '/v1/leaderboards/hi/players/carol?neighbours=1')
    expect(r.status).toBe(200)
    expect(r.json).toEqual({
      board: 'hi',
      player: 'carol',
      period: null,
      rank: 3,
      score: 50,
      above: [{ rank: 2, player: 'alice', score: 100 }],
      below: [{ rank: 4, player: 'dave', score: 50 }],
    })
    const def = await h.call('GET', '/v1/leaderboards/hi/players/alice')
    expect(def.json.rank).toBe(2)
    expect(def.json.above.map((e: any) => e.rank)).toEqual([1])
    expect(def.json.below.map((e: any) => [e.rank, e.player])).toEqual([
      [3, 'carol'],
      [4, 'dave'],
    ])
    const golf = await h.call('GET', '/v1/leaderboards/golf/players/z?neighbours=5')
    expect(golf.json.rank).toBe(3)
    expect(golf.json.above.map((e: any) => e.player)).toEqual(['y', 'x'])
    expect(golf.json.below).toEqual([])
  })

  test('an unranked player is 404 player_not_ranked', async () => {
    const r = await h.call('GET', '/v1/leaderboards/hi/players/nobody')
    expect(r.status).toBe(404)
    expect(r.json.error.code).toBe('player_not_ranked')
  })

  test('snapshot carries the channel version (0 when none)', async () => {
    const snap = await leaderboardSnapshot(h.database.db, 'hi')
    expect(snap.version).toBe(42)
    expect(snap.data.entries).toHaveLength(5)
    // Snapshot entries carry their tie order; REST pages do not.
    expect(snap.data.entries[0]).toEqual({ rank: 1, player: 'bob', score: 100, reachedSeq: expect.any(Number) })
    expect([snap.data.limit, snap.data.more]).toEqual([100, false])
    expect(snap.data.reserve).toEqual({ size: RESERVE_SIZE, entries: [], more: false })
    expect((await h.call('GET', '/v1/leaderboards/hi?limit=1')).json.entries).toEqual([{ rank: 1, player: 'bob', score: 100 }])
    const none = await leaderboardSnapshot(h.database.db, 'golf')
    expect(none.version).toBe(0)
    expect(none.data.order).toBe('asc')
  })

  test('a snapshot of a big board: the top 100 shown, then the reserve of the next entries as REST ranks them', async () => {
    const db = h.database.db
    // Ties on every score: the reserve must follow the same tie order (reachedSeq, then player).
    const rows = (board: string, n: number) => Array.from({ length: n }, (_, i) => ({ board, player: `p${String(i).padStart(3, '0')}`, score: Math.floor(i / 3), reachedSeq: 1000 - (i % 5) }))
    await db.insert(leaderboardEntries).values([...rows('deep', SNAPSHOT_SIZE + RESERVE_SIZE + 7), ...rows('half', SNAPSHOT_SIZE + 40)])
    const rest = async (board: string, offset: number, limit: number) =>
      (await h.call('GET', `/v1/leaderboards/${board}?offset=${offset}&limit=${limit}`)).json.entries.map(({ rank: _, ...e }: { rank: number }) => e)
    const deep = (await leaderboardSnapshot(db, 'deep')).data
    expect(deep.entries.map(({ reachedSeq: _, ...e }) => e)).toEqual((await h.call('GET', '/v1/leaderboards/deep?limit=100')).json.entries)
    expect(deep.more).toBe(true)
    expect(deep.reserve!.entries.map(({ reachedSeq: _, ...e }) => e)).toEqual(await rest('deep', SNAPSHOT_SIZE, RESERVE_SIZE))
    expect(deep.reserve!.entries.every((e) => e.reachedSeq >= 996 && !('rank' in e))).toBe(true)
    expect(deep.reserve!.more).toBe(true)
    const half = (await leaderboardSnapshot(db, 'half')).data
    expect([half.entries.length, half.more, half.reserve!.entries.length, half.reserve!.more]).toEqual([SNAPSHOT_SIZE, true, 40, false])
    expect(half.reserve!.entries.map(({ reachedSeq: _, ...e }) => e)).toEqual(await rest('half', SNAPSHOT_SIZE, 40))
  })

  test('a page or snapshot reads its own rows, not the whole board, for both orders, before any analyze', async () => {
    const db = h.database.db
    // 3,000 entries per board on 3 scores (1,000 ties each), every (score, reachedSeq) twice: the
    // player breaks those ties. Written in one statement, as a burst of scores is: the planner's
    // statistics do not know these boards yet (autovacuum analyzes about once a minute).
    for (const [board, order] of [['many-desc', 'desc'], ['many-asc', 'asc']] as const) {
      if (order === 'asc') await db.insert(leaderboards).values({ board, sortOrder: 'asc', operator: 'best' })
      await db.execute(sql`insert into leaderboard_entries (board, period, player, score, reached_seq)
        select ${board}, '', 'p' || lpad(i::text, 4, '0'), i % 3, 5000 + i % 500 from generate_series(0, 2999) i`)
    }
    const all = Array.from({ length: 3000 }, (_, i) => ({ player: `p${String(i).padStart(4, '0')}`, score: i % 3, seq: 5000 + (i % 500) }))
    const ranked = (order: 'asc' | 'desc') =>
      [...all].sort((a, b) => (order === 'desc' ? b.score - a.score : a.score - b.score) || a.seq - b.seq || (a.player < b.player ? -1 : 1))
    // Rows of leaderboard_entries this backend fetched and has not reported yet: it reports only
    // between transactions, so differences within one transaction are that transaction's reads.
    const fetched = async (q: Parameters<Parameters<typeof db.transaction>[0]>[0]) =>
      Number((await rowsOf<{ n: string }>(q, sql`select coalesce(idx_tup_fetch, 0) + seq_tup_read as n from pg_stat_xact_user_tables where relname = 'leaderboard_entries'`))[0].n)
    for (const order of ['desc', 'asc'] as const) {
      const board = `many-${order}`
      await db.transaction(async (tx) => {
        const before = await fetched(tx)
        const page = await leaderboardPage(tx as never, board, { limit: 10, offset: 0 })
        expect(page.entries.map((e) => e.player)).toEqual(ranked(order).slice(0, 10).map((e) => e.player))
        const afterPage = await fetched(tx)
        // limit + 1 rows (one more says whether a next page exists); the whole board is 3,000.
        expect(afterPage - before).toBeLessThanOrEqual(11)
        const snap = (await leaderboardSnapshot(tx as never, board)).data
        expect(snap.reserve!.entries.map((e) => e.player)).toEqual(ranked(order).slice(SNAPSHOT_SIZE, SNAPSHOT_SIZE + RESERVE_SIZE).map((e) => e.player))
        expect((await fetched(tx)) - afterPage).toBeLessThanOrEqual(SNAPSHOT_SIZE + RESERVE_SIZE + 1)
      })
    }
  })
})
