import { Elysia, t } from 'elysia'
import { resolve } from 'node:path'
import type { Config } from '../../../../core/config'
import { mintUserToken } from '../../auth/mint'
import { ErrorResponse } from '../../error-model'
import { fileAsset, scriptBundle } from '../../web-page'

const ROOT = resolve(import.meta.dir, '../../../../examples/arcade')
/** How long a demo session's token lives: short, so the page shows `token_expiring` and a refresh. */
const SESSION_SECONDS = 3600

export type DemoDeps = { config: Pick<Config, 'FANFARE_DEMO' | 'FANFARE_JWT_SECRET' | 'FANFARE_JWT_ISSUER' | 'FANFARE_JWT_AUDIENCE'> }

/**
 * The arcade demo (examples/arcade/) at /demo, built on the client SDK, with every asset served by
 * this node (no CDN: many servers have no internet). The page's script is bundled from its
 * TypeScript on first request. POST /demo/session stands in for a game's own sign-in: it mints a
 * user token for a name. Only with FANFARE_DEMO=on and a JWT secret to sign with.
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
        response: { 200: t.Object({ token: t.String(), user: t.String(), name: t.String() }), 422: ErrorResponse },
        detail: { summary: 'Demo sign-in: a user token for a name (FANFARE_DEMO=on only)', tags: ['demo'] },
      },
    )
}
