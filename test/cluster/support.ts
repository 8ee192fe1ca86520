import postgres from 'postgres'
import { until, type Proc } from '../e2e/harness'

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
