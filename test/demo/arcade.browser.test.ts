import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { chromium, type Browser, type Page } from 'playwright-core'
import { existsSync, mkdirSync } from 'node:fs'
import { resolve } from 'node:path'
import { startDeployment, type Deployment } from '../sdk/deployment'

/** Debian's chromium (installed by .ci/run), or CHROMIUM_PATH. */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const SHOTS = process.env.FANFARE_SCREENSHOTS ? resolve(import.meta.dir, '../../docs/demo') : undefined

/**
 * The arcade demo (examples/arcade/, served at /demo) in a real browser: two pages as two users.
 * One chats and reacts, the other sees both; a score sent over REST shows on the board in both.
 * FANFARE_SCREENSHOTS=1 also writes the README's screenshot (docs/demo/arcade.png).
 */
describe('the arcade demo in Chromium', () => {
  let d: Deployment
  let browser: Browser
  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM} (bash .ci/run installs Debian's chromium; or set CHROMIUM_PATH)`)
    d = await startDeployment({ apis: 1, workers: 1, vars: { FANFARE_DEMO: 'on', FANFARE_REACTION_WINDOW_MS: '200', FANFARE_PRESENCE_INTERVAL_MS: '200' } })
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] })
  }, 60_000)
  afterAll(async () => {
    await browser?.close()
    await d?.stop()
  })

  /** A page signed in as `name`: from the URL (`#name=`), or through the sign-in form. */
  const open = async (name: string, via: 'hash' | 'form' = 'hash') => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 760 } })
    const problems: string[] = []
    page.on('pageerror', (err) => void problems.push(String(err)))
    page.on('console', (m) => void (m.type() === 'error' && problems.push(m.text())))
    // Nothing may come from anywhere but the node itself (no CDN, no fonts).
    page.on('request', (r) => void (!r.url().startsWith(d.urls[0]) && !r.url().startsWith('data:') && problems.push(`request to ${r.url()}`)))
    if (via === 'hash') await page.goto(`${d.urls[0]}/demo#name=${name}`)
    else {
      await page.goto(`${d.urls[0]}/demo`)
      await page.locator('#signin input[name="name"]').fill(name)
      await page.locator('#signin button').click()
    }
    await page.getByTestId('status').filter({ hasText: 'connected' }).waitFor({ timeout: 15_000 })
    expect(await page.locator('#signin').isVisible()).toBe(false)
    expect(await page.getByTestId('who').textContent()).toBe(name)
    return { page, problems }
  }

  test('two users: chat and reactions from one reach the other; a REST score reaches both boards', async () => {
    const ann = await open('ann')
    const bob = await open('bob', 'form')
    const both: Page[] = [ann.page, bob.page]

    await ann.page.getByTestId('chat-input').fill('hello from ann')
    await ann.page.getByTestId('chat-send').click()
    for (let i = 0; i < 3; i++) await ann.page.locator('[data-emoji="👏"]').click()
    await ann.page.locator('[data-emoji="🔥"]').click()

    await bob.page.getByTestId('messages').getByText('hello from ann').waitFor({ timeout: 15_000 })
    await expect(bob.page.getByTestId('messages').locator('li b').first().textContent()).resolves.toBe('ann')
    await bob.page.getByTestId('totals').filter({ hasText: '👏 3' }).waitFor({ timeout: 15_000 })
    await bob.page.getByTestId('totals').filter({ hasText: '🔥 1' }).waitFor({ timeout: 15_000 })
    // Both pages watch the stage.
    for (const page of both) await page.getByTestId('viewers').filter({ hasText: '2 watching' }).waitFor({ timeout: 15_000 })

    const events = [
      { type: 'score.submitted', data: { board: 'arena', player: 'zed', score: 42 } },
      { type: 'score.submitted', data: { board: 'arena', player: 'amy', score: 57 } },
    ]
    expect((await d.call('POST', '/v1/events', { events })).status).toBe(202)
    for (const page of both) {
      await page.locator('[data-testid="board"] li[data-player="zed"]').filter({ hasText: '42' }).waitFor({ timeout: 15_000 })
      await expect(page.locator('[data-testid="board"] li').allTextContents()).resolves.toEqual(['1amy57', '2zed42'])
    }

    if (SHOTS) {
      mkdirSync(SHOTS, { recursive: true })
      await ann.page.locator('[data-emoji="❤️"]').click()
      await bob.page.waitForTimeout(300)
      await bob.page.screenshot({ path: `${SHOTS}/arcade.png` })
    }
    expect([...ann.problems, ...bob.problems]).toEqual([])
  }, 60_000)
})
