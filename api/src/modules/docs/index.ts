import { Elysia } from 'elysia'
import { openapi } from '@elysiajs/openapi'
import { resolve } from 'node:path'

/** The viewer of /docs: @scalar/api-reference 1.72.1, vendored (see vendor/scalar-api-reference/README.md). */
const VIEWER = resolve(import.meta.dir, '../../../../vendor/scalar-api-reference/standalone.js')

/**
 * The OpenAPI document at /docs/json and its reference at /docs, which works offline: its viewer
 * script is served by this node from a pinned copy (not `@latest` from a CDN, which left a blank
 * page on machines without internet), and its web fonts are off (they come from fonts.scalar.com).
 */
export function docsModule() {
  return new Elysia({ name: 'docs' })
    .use(
      openapi({
        path: '/docs',
        specPath: '/docs/json',
        scalar: { cdn: '/docs/scalar.js', withDefaultFonts: false },
        documentation: {
          info: { title: 'Fanfare API', version: '0.1.0', description: 'Events in, leaderboards and chat out.' },
          components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
        },
      }),
    )
    // The reference's HTML (the plugin's) names no icon, so the browser asks for /favicon.ico, and a
    // 404 there is an error in the page's console: answer it with nothing instead.
    .get('/favicon.ico', ({ set }) => {
      set.status = 204
      set.headers['cache-control'] = 'public, max-age=86400'
    }, { detail: { hide: true } })
    .get('/docs/scalar.js', () => new Response(Bun.file(VIEWER), { headers: { 'content-type': 'text/javascript; charset=utf-8', 'cache-control': 'public, max-age=86400' } }), {
      detail: { hide: true },
    })
}
