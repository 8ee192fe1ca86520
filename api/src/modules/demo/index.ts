import { Elysia, t } from 'elysia'
import { resolve } from 'node:path'
import type { Config } from '../../../../core/config'
import { Name } from '../../../../core/events'
import type { Db } from '../../../../core/db/client'
import { mintUserToken } from '../../auth/mint'
import type { KeyPrincipal } from '../../auth/principal'
import { BodyErrors, ErrorResponse } from '../../error-model'
import { Conflict, NotFound } from '../../errors'
import type { Ingest } from '../events/service'
import { putMode, readMatch } from '../matches/service'
import { fileAsset, scriptBundle } from '../../web-page'

const ROOT = resolve(import.meta.dir, '../../../../examples/arcade')
/** How long a demo session's token lives: short, so the page shows `token_expiring` and a refresh. */
const SESSION_SECONDS = 3600
/** The demo's game: matches of this mode, four seats, results scored on the page's board. */
const MODE = 'arcade'
const BOARD = 'arena'
const SEATS = 4

/**
 * The demo's stand-in for a game server: it may create, start and finish matches, nothing else.
 * A key id no admin-made key can have (theirs are `key_...`).
 */
const DEMO_SERVER: KeyPrincipal = { kind: 'key', id: 'demo', name: 'the arcade demo', scopes: ['publish:match.created', 'publish:match.start', 'publish:match.finish'] }

export type DemoDeps = {
  config: Pick<Config, 'FANFARE_DEMO' | 'FANFARE_JWT_SECRET' | 'FANFARE_JWT_ISSUER' | 'FANFARE_JWT_AUDIENCE'>
  db: Db
  ingest: Ingest
}

/**
 * The arcade demo (examples/arcade/) at /demo, built on the client SDK, with every asset served by
 * this node (no CDN: many servers have no internet). The page's script is bundled from its
 * TypeScript on first request. POST /demo/session stands in for a game's own sign-in: it mints a
 * user token for a name; POST /demo/matches and /demo/matches/:match/play stand in for a game
 * server (a match to gather in; a round played with made-up scores, which the `arcade` mode scores
 * on the page's board). Only with FANFARE_DEMO=on and a JWT secret to sign with.
 */
export function demoModule(deps: DemoDeps) {
  const app = new Elysia({ name: 'demo' })
  const secret = deps.config.FANFARE_JWT_SECRET
  if (deps.config.FANFARE_DEMO !== 'on' || !secret) return app
  return app
    .get('/demo', fileAsset(ROOT, 'index.html', 'text/html; charset=utf-8'), { detail: { hide: true } })
    .get('/demo/style.css', fileAsset(ROOT, 'style.css', 'text/css; charset=utf-8'), { detail: { hide: true } })
    .get('/demo/app.js', scriptBundle(`${ROOT}/app.ts`), { detail: { hide: true } })
    .post(
      '/demo/session',
      async ({ body }) => {
        const user = `demo-${body.name.toLowerCase()}`
        const token = await mintUserToken(secret, {
          sub: user,
          name: body.name,
          ttlSeconds: SESSION_SECONDS,
          issuer: deps.config.FANFARE_JWT_ISSUER,
          audience: deps.config.FANFARE_JWT_AUDIENCE,
        })
        return { token, user, name: body.name }
      },
      {
        body: t.Object({ name: t.String({ pattern: '^[A-Za-z0-9_-]{1,24}$', error: 'name must be 1-24 letters, digits, _ or -' }) }),
        response: { 200: t.Object({ token: t.String(), user: t.String(), name: t.String() }), 422: ErrorResponse, ...BodyErrors },
        detail: { summary: 'Demo sign-in: a user token for a name (FANFARE_DEMO=on only)', tags: ['demo'] },
      },
    )
    .post(
      '/demo/matches',
      async ({ set }) => {
        // Where the arcade's results go; set on every call, it costs one upsert.
        await putMode(deps.db, MODE, BOARD)
        const match = `arcade-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`
        await deps.ingest.publish([{ type: 'match.created', data: { match, mode: MODE, maxPlayers: SEATS } }], DEMO_SERVER)
        set.status = 202
        return { match }
      },
      {
        response: { 202: t.Object({ match: t.String() }) },
        detail: { summary: 'Demo game server: opens a match of the arcade mode (FANFARE_DEMO=on only)', tags: ['demo'] },
      },
    )
    .post(
      '/demo/matches/:match/play',
      async ({ params, set }) => {
        const m = await readMatch(deps.db, params.match)
        if (!m || m.mode !== MODE) throw new NotFound('not_found', `no arcade match ${JSON.stringify(params.match)}`)
        if ((m.status !== 'open' && m.status !== 'full') || m.players.length === 0) {
          throw new Conflict('not_playable', `match ${JSON.stringify(params.match)} is ${m.status}${m.players.length === 0 ? ' with nobody seated' : ''}: it cannot be played`)
        }
        // A round of the "game": every seated player gets a score. Two events of one match, in order.
        const results = m.players.map((p) => ({ player: p.player, score: 10 * (1 + Math.floor(Math.random() * 10)) }))
        await deps.ingest.publish(
          [
            { type: 'match.start', data: { match: params.match } },
            { type: 'match.finish', data: { match: params.match, results } },
          ],
          DEMO_SERVER,
        )
        set.status = 202
        return { match: params.match, results }
      },
      {
        params: t.Object({ match: Name }),
        response: { 202: t.Object({ match: t.String(), results: t.Array(t.Object({ player: t.String(), score: t.Number() })) }), 404: ErrorResponse, 409: ErrorResponse },
        detail: { summary: 'Demo game server: plays a round of an arcade match with made-up scores (FANFARE_DEMO=on only)', tags: ['demo'] },
      },
    )
}
