import { Elysia } from 'elysia'
import { resolve } from 'node:path'
import { fileAsset, scriptBundle } from '../../web-page'

const ROOT = resolve(import.meta.dir, 'page')

/**
 * The page holds an admin credential: it may run only its own script, talk only to this node
 * (REST and WebSocket), and not be framed by another site.
 */
const POLICY = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
  'referrer-policy': 'no-referrer',
}

/**
 * The admin console at /admin/console: a page (page/) that every API node serves itself, script
 * bundled from TypeScript on first request. The page holds no data: it signs in with an admin
 * credential typed into it (kept in the tab's sessionStorage, sent as a bearer header, never in a
 * URL) and reads everything through the admin REST routes and the WebSocket, as any client would.
 */
export function consoleModule() {
  return new Elysia({ name: 'console' })
    .get('/admin/console', fileAsset(ROOT, 'index.html', 'text/html; charset=utf-8', POLICY), { detail: { hide: true } })
    .get('/admin/console/style.css', fileAsset(ROOT, 'style.css', 'text/css; charset=utf-8'), { detail: { hide: true } })
    .get('/admin/console/app.js', scriptBundle(`${ROOT}/app.ts`), { detail: { hide: true } })
}
