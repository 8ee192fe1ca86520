import type postgres from 'postgres'
import type { Api } from '../../test/cluster/support'
import type { ChannelView, Subscriber } from './subscriber'
import type { Tally } from './send'

/** What every area of the soak gets: the deployment's API, the run's id, user tokens, its database. */
export type SoakContext = {
  api: Api
  /** Unique per run: event ids are made from it. */
  run: string
  /** A user token (HS256, the deployment's secret) for `sub`. */
  userToken: (sub: string, roles?: string[]) => Promise<string>
  /** The deployment's database (the read models). */
  sql: postgres.Sql
  startedAt: number
}

/** What an area found: promises broken, notes (not failures), and what it did (printed). */
export type Verdict = { broken: string[]; notes: string[]; summary: string[] }

/**
 * One read model driven by the soak, all of the same shape:
 * - `channels`: the channels its raw subscribers follow, each with how a subscriber keeps a view;
 * - `prepare`: what must exist before traffic (a board's rules, an open poll);
 * - `ingest`: its events sent until `endAt`, each batch resent with the same ids until acknowledged,
 *   what was acknowledged kept as the area's oracle (`tally` counts the requests);
 * - `check`: after the drain, the oracle against the read model (database), the REST read and the
 *   subscribers' views.
 */
export interface SoakArea {
  readonly name: string
  readonly tally: Tally
  /** `as`: the user whose token the subscribers connect with (a private channel); anonymous without. */
  readonly channels: { channel: string; subscribers: number; view: () => ChannelView; as?: string }[]
  prepare(ctx: SoakContext): Promise<void>
  ingest(ctx: SoakContext, endAt: number): Promise<void>
  check(ctx: SoakContext, subscribers: Subscriber[]): Promise<Verdict>
}

/** The version a channel holds in the read model (0 when it never changed). */
export async function channelVersion(sql: postgres.Sql, channel: string): Promise<number> {
  const rows = await sql`SELECT version FROM channel_versions WHERE channel = ${channel}`
  return rows.length ? Number(rows[0].version) : 0
}

/** Polls `read` every 250 ms until `done(value)` or `timeoutMs`; returns the last value read. */
export async function settle<T>(read: () => Promise<T>, done: (value: T) => boolean, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let value = await read()
  while (!done(value) && Date.now() < deadline) {
    await Bun.sleep(250)
    value = await read().catch(() => value)
  }
  return value
}
