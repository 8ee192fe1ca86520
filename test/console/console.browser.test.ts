import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { connect } from '@nats-io/transport-node'
import { type Browser, type Page } from 'playwright-core'
import { mkdirSync } from 'node:fs'
import { resolve } from 'node:path'
import { connectPostgres, type Database } from '../../core/db/client'
import { and, eq, inArray } from 'drizzle-orm'
import { deadLetters, projectionCheckpoints } from '../../core/db/schema'
import { until } from '../../core/testing/wait'
import { contracts, keyOf, partitionOf, subjects, type StoredEvent } from '../../core/events'
import { launchChromium, readsForward } from '../browser'
import { startDeployment, type Deployment } from '../sdk/deployment'

const SHOTS = process.env.FANFARE_SCREENSHOTS ? resolve(import.meta.dir, '../../docs/console') : undefined
/** A name for the node as a server is reached (the browser resolves it to 127.0.0.1): not a local host. */
const NODE_HOST = 'fanfare-node.lan'
/** What Scalar's viewer offers of its hosted services: its AI chat, MCP server, developer tools (Share, Deploy), API client, its site. */
const HOSTED = ['Ask AI', 'Generate MCP', 'Connect MCP', 'VS Code', 'Cursor', 'Developer Tools', 'Configure', 'Share', 'Deploy', 'Open API Client', 'Powered by Scalar']

/**
 * The admin console (/admin/console) and the API reference (/docs) in a real browser, against real
 * processes (one API node, one worker). Nothing may be fetched from anywhere but the node.
 * FANFARE_SCREENSHOTS=1 also writes a screenshot of each tab to docs/console/.
 */
describe('the admin console in Chromium', () => {
  let d: Deployment
  let browser: Browser
  let database: Database
  let page: Page
  const problems: string[] = []
  const clients: WebSocket[] = []

  const byTest = (id: string) => page.getByTestId(id)
  const shoot = async (name: string) => {
    if (!SHOTS) return
    mkdirSync(SHOTS, { recursive: true })
    await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true })
  }
  const tab = async (name: string) => {
    await page.locator(`nav a[data-tab="${name}"]`).click()
    await page.locator(`section#${name}.active`).waitFor()
  }

  /** A dead letter of a valid event, as a projection bug since fixed would have left it. */
  const fixedBugLetter = async (event: StoredEvent) => {
    const partition = partitionOf(keyOf(event), d.env.config.FANFARE_PARTITIONS)
    const [row] = await database.db
      .insert(deadLetters)
      .values({
        projection: 'leaderboards',
        partition,
        streamSeq: 1,
        subject: subjects.event(d.env.vars.FANFARE_SUBJECT_PREFIX, partition, event.type),
        eventId: event.id,
        reason: 'a bug, since fixed',
        payload: JSON.stringify(event),
      })
      .returning({ id: deadLetters.id })
    return row.id
  }

  beforeAll(async () => {
    d = await startDeployment({ apis: 1, workers: 1 })
    database = await connectPostgres(d.env.vars.DATABASE_URL, { max: 2 })
    browser = await launchChromium({ hosts: [NODE_HOST] })
    page = await browser.newPage({ viewport: { width: 1280, height: 860 } })
    page.on('pageerror', (err) => void problems.push(String(err)))
    // Failed loads are judged by their answers below (401, 404 and 409 are expected ones here).
    page.on('console', (m) => void (m.type() === 'error' && !m.text().startsWith('Failed to load resource') && problems.push(m.text())))
    page.on('response', (r) => void (r.status() >= 500 && problems.push(`${r.status()} from ${r.url()}`)))
    // A projection never rebuilt is no error: the projections tab asked each for its job (404) every refresh.
    page.on('response', (r) => void (r.status() === 404 && r.url().includes('/rebuild') && problems.push(`404 from ${r.url()}`)))
    page.on('dialog', (dialog) => void dialog.accept())
    const ws = d.urls[0].replace('http://', 'ws://')
    page.on('request', (r) => void (![d.urls[0], ws, 'data:'].some((p) => r.url().startsWith(p)) && problems.push(`request to ${r.url()}`)))
  }, 60_000)
  afterAll(async () => {
    clients.forEach((c) => c.close())
    await browser?.close()
    await database?.close()
    await d?.stop()
  })

  test('a wrong credential is refused; the admin token signs in, and stays out of the URL', async () => {
    await page.goto(`${d.urls[0]}/admin/console`)
    await byTest('token').fill('not-a-token')
    await byTest('token').press('Enter')
    await byTest('signin-error').filter({ hasText: 'invalid_token' }).waitFor()
    await byTest('token').fill(d.env.vars.FANFARE_ADMIN_TOKEN)
    await byTest('token').press('Enter')
    await page.locator('section#overview.active').waitFor()
    expect(page.url()).not.toContain(d.env.vars.FANFARE_ADMIN_TOKEN)
    expect(await page.evaluate(() => sessionStorage.length)).toBe(1)
  }, 30_000)

  test('overview: the connection count rises when a client connects; its channel is among the busiest', async () => {
    await byTest('connections').filter({ hasText: /^0$/ }).waitFor({ timeout: 15_000 })
    const client = new WebSocket(`${d.urls[0].replace('http', 'ws')}/v1/ws`)
    clients.push(client)
    client.onopen = () => client.send(JSON.stringify({ op: 'subscribe', channel: 'leaderboard:arena' }))
    await byTest('connections').filter({ hasText: /^1$/ }).waitFor({ timeout: 15_000 })
    await byTest('busiest').getByText('leaderboard:arena').waitFor({ timeout: 15_000 })
    await byTest('workers').locator('tbody tr').first().waitFor({ timeout: 15_000 })
    // Events per second come from the event stream.
    const events = Array.from({ length: 20 }, (_, i) => ({ type: 'score.submitted', data: { board: 'arena', player: i === 0 ? 'zed' : `p${i}`, score: 42 - i } }))
    expect((await d.call('POST', '/v1/events', { events })).status).toBe(202)
    await byTest('eps').filter({ hasNotText: /^0(\.0)?$/ }).waitFor({ timeout: 15_000 })
    await page.locator('#chart polyline').waitFor({ state: 'attached' })
    await shoot('overview')
  }, 30_000)

  test('inspector: subscribes to a channel over the WebSocket and shows its frames', async () => {
    await tab('inspector')
    await byTest('inspect-channel').fill('leaderboard:arena')
    await byTest('inspect-go').click()
    await byTest('ws-state').filter({ hasText: 'open' }).waitFor({ timeout: 15_000 })
    await byTest('frames').locator('li[data-op="snapshot"]').filter({ hasText: 'zed' }).waitFor({ timeout: 15_000 })
    expect((await d.call('POST', '/v1/events', { type: 'score.submitted', data: { board: 'arena', player: 'amy', score: 57 } })).status).toBe(202)
    await byTest('frames').locator('li[data-op="update"]').filter({ hasText: 'amy' }).waitFor({ timeout: 15_000 })
    await shoot('inspector')
  }, 30_000)

  test('dead letters: inspect, a replay that still fails stays, a fixed one applies, discard', async () => {
    // A poison message, straight onto the event stream: replaying it fails again.
    const nc = await connect({ servers: d.env.vars.NATS_URL })
    await nc.publish(subjects.event(d.env.vars.FANFARE_SUBJECT_PREFIX, 0, 'score.submitted'), 'not json')
    await nc.flush()
    await nc.close()
    const event = { id: 'ev-fixed-1', by: 'ingest', type: 'score.submitted', v: contracts['score.submitted'].version, data: { board: 'arena', player: 'kit', score: 99 }, at: new Date().toISOString() } as StoredEvent
    const fixed = await fixedBugLetter(event)

    await tab('dead-letters')
    const rows = byTest('dead-letters').locator('tbody tr')
    await rows.filter({ hasText: 'body is not JSON' }).waitFor({ timeout: 15_000 })
    const poison = rows.filter({ hasText: 'body is not JSON' })
    await poison.locator('button', { hasText: 'Inspect' }).click()
    await byTest('letter-payload').filter({ hasText: 'not json' }).waitFor()
    await poison.locator('[data-action="replay"]').click()
    await byTest('notice').filter({ hasText: 'still_failing' }).waitFor({ timeout: 15_000 })
    expect(await poison.count()).toBe(1)

    await rows.filter({ hasText: 'ev-fixed-1' }).locator('button', { hasText: 'Inspect' }).click()
    await byTest('letter-payload').filter({ hasText: '"kit"' }).waitFor()
    await shoot('dead-letters')
    await rows.filter({ hasText: 'ev-fixed-1' }).locator('[data-action="replay"]').click()
    await byTest('notice').filter({ hasText: `dead letter ${fixed} replayed` }).waitFor({ timeout: 15_000 })
    await rows.filter({ hasText: 'ev-fixed-1' }).waitFor({ state: 'detached', timeout: 15_000 })
    const board = await d.call('GET', '/v1/leaderboards/arena')
    expect(board.json.entries.map((e: any) => e.player)).toContain('kit')

    await poison.locator('[data-action="discard"]').click()
    await byTest('notice').filter({ hasText: 'discarded' }).waitFor({ timeout: 15_000 })
    await poison.waitFor({ state: 'detached', timeout: 15_000 })
  }, 45_000)

  test('keys: create (the secret shown once), revoke; the key stops working', async () => {
    await tab('keys')
    await byTest('key-name').fill('scoreboard')
    await byTest('key-scopes').fill('publish:score.submitted')
    await byTest('key-create').click()
    const secret = (await byTest('new-key-secret').textContent())!
    expect(secret).toStartWith('ffk_')
    const submit = (token: string) => d.call('POST', '/v1/events', { type: 'score.submitted', data: { board: 'arena', player: 'key', score: 1 } }, { token })
    expect((await submit(secret)).status).toBe(202)
    const row = byTest('keys').locator('tbody tr').filter({ hasText: 'scoreboard' })
    await row.filter({ hasText: 'active' }).waitFor({ timeout: 15_000 })
    await shoot('keys')
    await row.locator('[data-action="revoke"]').click()
    await row.filter({ hasText: 'revoked' }).waitFor({ timeout: 15_000 })
    expect((await submit(secret)).status).toBe(401)
    await byTest('revocations').getByText('key.revoked').waitFor({ timeout: 15_000 })
    // A refused form says which field is wrong, not only "invalid body".
    await page.locator('#revoke-token input[name="jti"]').fill('some-jti')
    await page.locator('#revoke-token input[name="exp"]').fill('tomorrow')
    await page.locator('#revoke-token input[name="exp"]').press('Enter')
    await byTest('notice').filter({ hasText: 'invalid body (exp: Expected number)' }).waitFor({ timeout: 15_000 })
  }, 30_000)

  test('projections and audit log', async () => {
    // A range the retention deleted before it was applied, as a runner records it (see takeExpiredRange).
    await until('the worker to claim partition 0', async () => (await database.db.select().from(projectionCheckpoints).where(and(eq(projectionCheckpoints.projection, 'leaderboards'), eq(projectionCheckpoints.partition, 0)))).length === 1)
    await database.db
      .update(projectionCheckpoints)
      .set({ expiredFrom: 41, expiredTo: 97, expiredAt: new Date() })
      .where(and(eq(projectionCheckpoints.projection, 'leaderboards'), eq(projectionCheckpoints.partition, 0)))
    await tab('projections')
    await byTest('projections').locator('[data-projection="leaderboards"] tbody tr').first().waitFor({ timeout: 15_000 })
    await byTest('rebuild-leaderboards').filter({ hasText: 'never rebuilt' }).waitFor()
    await byTest('expired-leaderboards-0').filter({ hasText: 'seq 41–97 deleted unapplied' }).waitFor({ timeout: 15_000 })
    expect(await page.locator('[data-testid^="expired-"]').count()).toBe(1)
    // An idle runner waits for a first message, pull after pull.
    await byTest('waiting-leaderboards-0').filter({ hasText: /^pull · since \d+s ago$/ }).waitFor({ timeout: 15_000 })
    // The catch of unclaimed subjects: shown with its checkpoint once partition 0's worker started it, never offered a rebuild.
    await byTest('unclaimed').filter({ hasText: 'checkpoint seq' }).waitFor({ timeout: 15_000 })
    expect(await byTest('unclaimed').locator('button').count()).toBe(0)
    await shoot('projections')
    await tab('audit')
    for (const action of ['dead_letter.replayed', 'dead_letter.replay_failed', 'dead_letter.discarded', 'key.created', 'key.revoked']) {
      await byTest('audit').locator('tbody td', { hasText: action }).first().waitFor({ timeout: 15_000 })
    }
    await shoot('audit')
  }, 30_000)

  test('hostile data: a right-to-left override cannot turn what follows it around, hidden characters show, long ids wrap', async () => {
    const admin = { token: d.env.vars.FANFARE_ADMIN_TOKEN }
    // An admin types whatever user id a support ticket names; key names are free text.
    const user = `vic\u202etim${'U'.repeat(100)}`
    expect((await d.call('POST', `/admin/users/${encodeURIComponent(user)}/revoke`, undefined, admin)).status).toBe(200)
    expect((await d.call('POST', '/admin/keys', { name: 'evil\u202e\u200bkey', scopes: ['publish:score.submitted'] }, admin)).status).toBe(201)
    await tab('keys')
    const revoked = byTest('revocations').locator('li', { hasText: 'user.revoked' }).first()
    await revoked.waitFor({ timeout: 15_000 })
    // " by admin" must read left to right, whatever the user id before it holds.
    const byReadsForward = await readsForward(revoked, ' by ', { from: 1 })
    expect(byReadsForward).toBe(true)
    expect(await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)).toBeLessThanOrEqual(0)
    await tab('audit')
    const details = byTest('audit').locator('tbody tr', { hasText: 'key.created' }).locator('code', { hasText: 'evil' }).first()
    await details.waitFor({ timeout: 15_000 })
    // JSON the console shows spells out the characters that reorder or hide text.
    expect(await details.textContent()).toContain('"name":"evil\\u202e\\u200bkey"')
  }, 30_000)

  test('audit log: older pages stay shown while the page refreshes, and new entries come in above them', async () => {
    const admin = { token: d.env.vars.FANFARE_ADMIN_TOKEN }
    // More than two pages (50 a page) of entries.
    for (let i = 0; i < 110; i++) expect((await d.call('POST', `/admin/users/paged-${i}/revoke`, undefined, admin)).status).toBe(200)
    await tab('audit')
    const audit = byTest('audit').locator('tbody tr')
    await audit.filter({ hasText: 'user:paged-109' }).waitFor({ timeout: 15_000 })
    await page.locator('#audit-more').click()
    await page.locator('#audit-more').click()
    // The first entry of all (id 1) is on the third page.
    const first = audit.filter({ has: page.locator('td:first-child', { hasText: /^1$/ }) })
    await first.waitFor({ timeout: 15_000 })
    // Two refreshes (every 2 s) later the older pages are still there, and a new entry is on top.
    expect((await d.call('POST', '/admin/users/paged-new/revoke', undefined, admin)).status).toBe(200)
    await audit.first().filter({ hasText: 'user:paged-new' }).waitFor({ timeout: 15_000 })
    await page.waitForTimeout(4500)
    expect(await first.count()).toBe(1)
    const ids = await audit.locator('td:first-child').allTextContents()
    expect(ids.map(Number)).toEqual([...ids.map(Number)].sort((a, b) => b - a))
    expect(new Set(ids).size).toBe(ids.length)
    expect(ids.length).toBeGreaterThan(110)
  }, 60_000)

  test('dead letters: more than a page (100) is listed page by page, none out of reach', async () => {
    const letters = Array.from({ length: 130 }, (_, i) => ({
      projection: 'leaderboards',
      partition: 0,
      streamSeq: 10_000 + i,
      subject: subjects.event(d.env.vars.FANFARE_SUBJECT_PREFIX, 0, 'score.submitted'),
      eventId: `paged-letter-${i}`,
      reason: 'not JSON',
      payload: '{',
    }))
    const ids = (await database.db.insert(deadLetters).values(letters).returning({ id: deadLetters.id })).map((r) => r.id)
    await tab('dead-letters')
    const table = byTest('dead-letters').locator('tbody tr')
    await table.filter({ hasText: 'paged-letter-129' }).waitFor({ timeout: 15_000 })
    const oldestRow = byTest('dead-letters').locator(`tbody tr[data-id="${ids[0]}"]`)
    expect(await table.count()).toBe(100)
    expect(await oldestRow.count()).toBe(0)
    // Inspecting one shows its payload where it can be seen, below a hundred rows.
    await table.filter({ hasText: 'paged-letter-129' }).getByRole('button', { name: 'Inspect' }).click()
    await expect(byTest('letter-payload').evaluate((e) => e.getBoundingClientRect().top < innerHeight)).resolves.toBe(true)
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('letter')
    await byTest('dead-letters-more').click()
    await oldestRow.waitFor({ timeout: 15_000 })
    // Still there after a refresh; and the end of the list says so.
    await page.waitForTimeout(2500)
    expect(await oldestRow.count()).toBe(1)
    expect(await byTest('dead-letters-more').isHidden()).toBe(true)
    await database.db.delete(deadLetters).where(inArray(deadLetters.id, ids))
  }, 60_000)

  test('a node out of reach is said plainly, and the notice goes once the node answers again', async () => {
    await tab('overview')
    // As when the node is down or restarting: its requests fail without an answer.
    const down = (route: { abort: () => Promise<void> }) => route.abort()
    await page.route('**/admin/**', down)
    await byTest('notice').filter({ hasText: 'no answer from' }).waitFor({ timeout: 15_000 })
    await page.unroute('**/admin/**', down)
    await byTest('notice').waitFor({ state: 'hidden', timeout: 15_000 })
  }, 30_000)

  test('/docs renders the API reference from the node alone, with none of Scalar\'s hosted services; "Test Request" asks the node', async () => {
    // The viewer picks its extras by the page's host: on a local one (127.0.0.1) its developer tools
    // (Share, Deploy), "Ask AI" and "Generate MCP"; on any other "Open API Client". Both, then.
    for (const origin of [d.urls[0], d.urls[0].replace('127.0.0.1', NODE_HOST)]) {
      const docs = await browser.newPage({ viewport: { width: 1280, height: 860 } })
      const outside: string[] = []
      docs.on('request', (r) => void (!r.url().startsWith(origin) && !r.url().startsWith('data:') && outside.push(r.url())))
      // Its console too, which also shows what the browser asks for on its own (the page's icon).
      const errors: string[] = []
      docs.on('console', (m) => void (m.type() === 'error' && errors.push(m.text())))
      docs.on('pageerror', (err) => void errors.push(String(err)))
      await docs.goto(`${origin}/docs`)
      await docs.getByText('Readiness: Postgres and NATS/JetStream', { exact: false }).first().waitFor({ timeout: 30_000 })
      await docs.getByRole('button', { name: /Open Group - admin/ }).first().click()
      await docs.getByText('Replay a dead letter through its projection', { exact: false }).first().waitFor({ timeout: 15_000 })
      // Nothing shown leads off the node ("Open API Client", "Powered by Scalar" are links to scalar.com) ...
      const links = await docs.locator('a[href]:visible').evaluateAll((as) => as.map((a) => (a as HTMLAnchorElement).href))
      expect(links.filter((href) => /^https?:/.test(href) && new URL(href).origin !== origin)).toEqual([])
      // ... nor sends the document there (buttons, some not even links).
      const shown: string[] = []
      for (const label of HOSTED) if ((await docs.getByText(label, { exact: true }).filter({ visible: true }).count()) > 0) shown.push(label)
      expect(shown).toEqual([])
      if (SHOTS && origin === d.urls[0]) await docs.screenshot({ path: `${SHOTS}/docs.png` })
      // Its examples name the node, as the page reached it: a copied `curl /healthz` went nowhere.
      const curls = await docs.locator('pre, code').evaluateAll((els) => els.map((e) => e.textContent ?? '').filter((t) => t.startsWith('curl ')))
      expect(curls).toContain(`curl ${origin}/healthz\n`)
      expect(curls.filter((c) => !c.startsWith(`curl ${origin}/`))).toEqual([])
      // "Test Request" works offline: straight to this node, no proxy.
      await docs.locator('button', { hasText: 'get /healthz' }).first().click()
      const answered = docs.waitForResponse((r) => r.url() === `${origin}/healthz`, { timeout: 15_000 })
      // Its label joins the server ('/', resolved) and the path with two slashes; the request has one (`answered`).
      await docs.getByRole('button', { name: /^Send get request to .*\/healthz$/ }).first().click()
      expect((await answered).status()).toBe(200)
      await docs.getByText('200 OK').first().waitFor({ timeout: 15_000 })
      await docs.close()
      expect(outside).toEqual([])
      expect(errors).toEqual([])
    }
  }, 60_000)

  test('overview: with no worker the projection lag is unknown, not 0, while events wait', async () => {
    await tab('overview')
    await byTest('lag').filter({ hasText: /^0$/ }).waitFor({ timeout: 15_000 })
    // Stopped cleanly, the worker deletes its consumers: no partition has an owner, the lag is null.
    await d.procs.find((p) => p.name === 'worker-0')!.stop()
    expect((await d.call('POST', '/v1/events', { type: 'score.submitted', data: { board: 'arena', player: 'late', score: 1 } })).status).toBe(202)
    await byTest('lag').filter({ hasText: /^\?$/ }).waitFor({ timeout: 15_000 })
  }, 45_000)

  test('nothing left the node, and the page logged no errors', () => {
    expect(problems).toEqual([])
  })
})
