import postgres from 'postgres'
import { until, type Proc, type WsClient } from '../e2e/harness'

/** An ingest client for one deployment: posts batches, reports status and body. */
export type Api = { baseUrl: string; ingestToken: string; adminToken: string }

export type ScoreEvent = { id: string; type: 'score.submitted'; data: { board: string; player: string; score: number } }

/** Makes a score event with a caller-chosen id (resending it must be de-duplicated). */
export const scoreEvent = (id: string, board: string, player: string, score: number): ScoreEvent => ({
  id,
  type: 'score.submitted',
  data: { board, player, score },
})

/** POSTs a batch; a request that takes longer than `timeoutMs` is reported as status 0 (`timeout`). */
export async function postEvents(api: Api, events: ScoreEvent[], timeoutMs = 15_000): Promise<{ status: number; body: any }> {
  try {
    const res = await fetch(`${api.baseUrl}/v1/events`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${api.ingestToken}` },
      body: JSON.stringify({ events }),
      signal: AbortSignal.timeout(timeoutMs),
    })
    return { status: res.status, body: await res.json().catch(() => null) }
  } catch (err) {
    const name = (err as Error)?.name
    return { status: 0, body: { error: { code: name === 'TimeoutError' ? 'timeout' : 'connection', message: String(err) } } }
  }
}

/** Sets a board's rules through the admin API; throws unless 200. */
export async function configureBoard(api: Api, board: string, operator: 'latest' | 'sum' | 'best') {
  const res = await fetch(`${api.baseUrl}/admin/leaderboards/${board}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${api.adminToken}` },
    body: JSON.stringify({ operator }),
  })
  if (res.status !== 200) throw new Error(`PUT /admin/leaderboards/${board}: ${res.status} ${await res.text()}`)
}

/** What the read models hold, read straight from Postgres. */
export type ReadModel = {
  scores: (board: string) => Promise<Map<string, number>>
  /** A channel's version: exactly the number of changes applied to it. */
  version: (channel: string) => Promise<number>
  deadLetters: () => Promise<number>
  close: () => Promise<void>
}

export function readModel(databaseUrl: string): ReadModel {
  const sql = postgres(databaseUrl, { max: 2, onnotice: () => {} })
  return {
    scores: async (board) => {
      const rows = await sql`SELECT player, score FROM leaderboard_entries WHERE board = ${board}`
      return new Map(rows.map((r) => [r.player as string, Number(r.score)]))
    },
    version: async (channel) => {
      const rows = await sql`SELECT version FROM channel_versions WHERE channel = ${channel}`
      return rows.length ? Number(rows[0].version) : 0
    },
    deadLetters: async () => Number((await sql`SELECT count(*)::int AS n FROM dead_letters`)[0].n),
    close: () => sql.end({ timeout: 5 }),
  }
}

/** Differences between a board and its oracle, at most `max` of them (empty when equal). */
export function diff(actual: Map<string, number>, oracle: Map<string, number>, max = 5): string[] {
  const out: string[] = []
  for (const [player, score] of oracle) {
    if (actual.get(player) !== score) out.push(`${player}: expected ${score}, got ${actual.get(player)}`)
    if (out.length >= max) return out
  }
  for (const player of actual.keys()) {
    if (!oracle.has(player)) out.push(`${player}: unexpected`)
    if (out.length >= max) return out
  }
  return out
}

/** Polls until `board` equals `oracle`; throws with the remaining differences at the deadline. */
export async function untilBoardEquals(rm: ReadModel, board: string, oracle: Map<string, number>, timeoutMs: number) {
  let last: string[] = []
  try {
    await until(
      `board ${board} to equal its oracle`,
      async () => {
        last = diff(await rm.scores(board), oracle)
        return last.length === 0
      },
      timeoutMs,
      250,
    )
  } catch (err) {
    throw new Error(`${(err as Error).message}; first differences: ${last.join('; ')}`)
  }
}

/** Stops each process with SIGTERM, one after another; a non-zero exit fails with its log tail. */
export async function stopCleanly(...procs: Proc[]) {
  for (const p of procs) {
    const code = await p.stop('SIGTERM')
    if (code !== 0) throw new Error(`${p.name} exited ${code} on SIGTERM:\n${p.output().slice(-3000)}`)
  }
}

/**
 * A subscriber's view of a board, built only from its frames; throws on a gap or a repeat, and
 * (with `increasing`) on a player's score going down between two updates, which, when every
 * player's scores are sent rising, is an event applied out of its key's order.
 */
export class BoardView {
  board = new Map<string, number>()
  version = -1
  resyncs = 0
  private seen = 0
  constructor(
    readonly client: WsClient,
    readonly opts: { increasing?: boolean } = {},
  ) {}
  /** Applies the frames received since the last call. */
  catchUp(channel: string) {
    const frames = this.client.of(channel)
    for (; this.seen < frames.length; this.seen++) {
      const f = frames[this.seen]
      if (f.op === 'snapshot') {
        if (this.seen > 0 && !f.resync) throw new Error('a second snapshot not marked resync')
        if (f.resync) this.resyncs++
        this.board = new Map(f.data.entries.map((e: { player: string; score: number }) => [e.player, e.score]))
        this.version = f.version
      } else {
        if (f.version !== this.version + 1) throw new Error(`update ${f.version} after ${this.version}: a gap or a repeat`)
        const before = this.board.get(f.data.player)
        if (this.opts.increasing && before !== undefined && f.data.score <= before) {
          throw new Error(`${f.data.player}: score ${f.data.score} after ${before} (version ${f.version}): out of order`)
        }
        this.board.set(f.data.player, f.data.score)
        this.version = f.version
      }
    }
    return this
  }
}
