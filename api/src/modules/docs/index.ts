import { Elysia } from 'elysia'
import { openapi } from '@elysiajs/openapi'
import { resolve } from 'node:path'

/** The viewer of /docs: @scalar/api-reference 1.72.1, vendored (see vendor/scalar-api-reference/README.md). */
const VIEWER = resolve(import.meta.dir, '../../../../vendor/scalar-api-reference/standalone.js')

/**
 * What the viewer shows: the reference and its "Test Request" (sent straight to this node), none of
 * Scalar's hosted services, which lead off the node and mean nothing on one without internet. Each
 * is an option of 1.72.1 (its configuration schema in standalone.js), on by default:
 * - `showDeveloperTools`: the bar on top (Configure; Share uploads the document to api.scalar.com;
 *   Deploy sends it to dashboard.scalar.com), shown when the page's host is local (localhost,
 *   127.0.0.1, *.test, ...);
 * - `agent.disabled`: "Ask AI", a chat served by api.scalar.com (same hosts, or with an agent key);
 * - `mcp.disabled`: "Generate MCP" (registers the document on dashboard.scalar.com; same hosts);
 * - `hideClientButton`: "Open API Client", a link to client.scalar.com (on every other host);
 * - `telemetry`: no code of 1.72.1 reads it; off so that a later version keeps it off.
 * No option hides the "Powered by Scalar" link (to scalar.com): `customCss` does. Setting
 * `customCss` replaces the plugin's own colours (it writes `customCss ?? elysiaCSS`), so `theme`
 * takes Scalar's Elysia preset, close to them.
 */
const VIEWER_OPTIONS = {
  cdn: '/docs/scalar.js',
  // Web fonts come from fonts.scalar.com.
  withDefaultFonts: false,
  showDeveloperTools: 'never' as const,
  agent: { disabled: true },
  mcp: { disabled: true },
  hideClientButton: true,
  telemetry: false,
  theme: 'elysiajs' as const,
  customCss: '.darklight-reference a[href="https://www.scalar.com"] { display: none }',
}

/**
 * The OpenAPI document at /docs/json and its reference at /docs, which works offline: its viewer
 * script is served by this node from a pinned copy (not `@latest` from a CDN, which left a blank
 * page on machines without internet), its web fonts are off, and it offers nothing hosted elsewhere
 * (VIEWER_OPTIONS).
 */
export function docsModule() {
  return new Elysia({ name: 'docs' })
    .use(
      openapi({
        path: '/docs',
        specPath: '/docs/json',
        scalar: VIEWER_OPTIONS,
        documentation: {
          info: { title: 'Fanfare API', version: '0.1.0', description: 'Events in, leaderboards and chat out.' },
          // Relative: the node that served the document. The viewer resolves it against the page's
          // address, so its examples name the node as the reader reached it (without it: `curl /healthz`).
          servers: [{ url: '/' }],
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
