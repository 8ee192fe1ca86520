import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { type Browser, type Page } from 'playwright-core'
import { mkdirSync } from 'node:fs'
import { resolve } from 'node:path'
import { launchChromium, readsForward } from '../browser'
import { startDeployment, type Deployment } from '../sdk/deployment'

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
    d = await startDeployment({ apis: 1, workers: 1, vars: { FANFARE_DEMO: 'on', FANFARE_REACTION_WINDOW_MS: '200', FANFARE_PRESENCE_INTERVAL_MS: '200' } })
    browser = await launchChromium()
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

    expect([...ann.problems, ...bob.problems]).toEqual([])
    await Promise.all(both.map((p) => p.close()))
  }, 60_000)

  test('the lobby: two players take seats, one is ready, a round is played and scores on the board in both pages', async () => {
    const cat = await open('cat')
    // cat's page opened the match (none was open); dan's page finds the same one.
    await cat.page.getByTestId('match-status').filter({ hasText: 'open, 0/4 seated' }).waitFor({ timeout: 15_000 })
    const dan = await open('dan')
    const both: Page[] = [cat.page, dan.page]
    const match = await cat.page.getByTestId('match-name').textContent()
    await dan.page.getByTestId('match-name').filter({ hasText: match! }).waitFor({ timeout: 15_000 })

    await cat.page.getByTestId('join').click()
    await cat.page.getByTestId('decision').filter({ hasText: `you have a seat in ${match}` }).waitFor({ timeout: 15_000 })
    await dan.page.getByTestId('join').click()
    for (const page of both) await page.getByTestId('match-status').filter({ hasText: 'open, 2/4 seated' }).waitFor({ timeout: 15_000 })
    // Seated players cannot join twice; the page says so by disabling the button.
    await expect(cat.page.getByTestId('join').isDisabled()).resolves.toBe(true)
    await dan.page.getByTestId('ready').click()
    await cat.page.locator('[data-testid="seats"] li[data-player="demo-dan"] .ready').filter({ hasText: 'ready' }).waitFor({ timeout: 15_000 })
    await expect(cat.page.locator('[data-testid="seats"] li[data-player]').allTextContents()).resolves.toEqual(['demo-cat', 'demo-danready'])

    const shot = async () => {
      if (!SHOTS) return
      mkdirSync(SHOTS, { recursive: true })
      await dan.page.locator('[data-emoji="❤️"]').click()
      await cat.page.waitForTimeout(300)
      await cat.page.screenshot({ path: `${SHOTS}/arcade.png` })
    }
    await cat.page.getByTestId('play').click()
    for (const page of both) {
      await page.getByTestId('match-status').filter({ hasText: 'finished: 1. ' }).waitFor({ timeout: 15_000 })
      // The arcade mode scores its results on the page's board, once.
      await page.locator('[data-testid="board"] li[data-player="demo-cat"]').waitFor({ timeout: 15_000 })
      await page.locator('[data-testid="board"] li[data-player="demo-dan"]').waitFor({ timeout: 15_000 })
      await expect(page.getByTestId('next-match').isVisible()).resolves.toBe(true)
    }
    const res = await d.call('GET', `/v1/matches/${match}`)
    const results = (res.json as { results: { player: string; score: number }[] }).results
    expect(results.map((r) => r.player).sort()).toEqual(['demo-cat', 'demo-dan'])
    for (const r of results) {
      await expect(cat.page.locator(`[data-testid="board"] li[data-player="${r.player}"] .score`).textContent()).resolves.toBe(String(r.score))
    }
    await shot()
    // The next match: a new one, both seats open again.
    await cat.page.getByTestId('next-match').click()
    await cat.page.getByTestId('match-status').filter({ hasText: 'open, 0/4 seated' }).waitFor({ timeout: 15_000 })
    expect(await cat.page.getByTestId('match-name').textContent()).not.toBe(match)
    expect([...cat.problems, ...dan.problems]).toEqual([])
  }, 60_000)
  test('hostile names and text show as text, in place: markup, a right-to-left override, strings without a break', async () => {
    const markup = '<img src=x onerror="window.__pwn=1">'
    const long = 'W'.repeat(2000)
    const events = [
      // A key may post on behalf of a user, with any display name the contract allows.
      { type: 'chat.message.posted', data: { room: 'lobby', user: 'mal', name: 'Mal\u202e', text: 'ABCDEF' } },
      { type: 'chat.message.posted', data: { room: 'lobby', user: 'mel', text: markup } },
      { type: 'chat.message.posted', data: { room: 'lobby', user: 'lon', text: long } },
      { type: 'score.submitted', data: { board: 'arena', player: 'Q'.repeat(128), score: 1 } },
    ]
    expect((await d.call('POST', '/v1/events', { events })).status).toBe(202)
    const eve = await open('eve')
    const page = eve.page
    await page.getByTestId('messages').getByText('ABCDEF').waitFor({ timeout: 15_000 })
    await page.getByTestId('messages').getByText(markup).waitFor({ timeout: 15_000 })
    await page.locator(`[data-testid="board"] li[data-player="${'Q'.repeat(128)}"]`).waitFor({ timeout: 15_000 })
    const seen = await page.evaluate(() => {
      const li = [...document.querySelectorAll('[data-testid="messages"] li')].find((l) => l.textContent!.endsWith('ABCDEF'))!
      const text = li.lastChild!
      const x = (i: number) => {
        const r = document.createRange()
        r.setStart(text, i)
        r.setEnd(text, i + 1)
        return r.getBoundingClientRect().x
      }
      const messages = document.querySelector('[data-testid="messages"]')!
      return {
        pwned: (window as any).__pwn ?? null,
        images: document.querySelectorAll('main img').length,
        // Read left to right: the name's override must not turn the message around.
        firstLeftOfLast: x(0) < x(5),
        pageOverflow: document.documentElement.scrollWidth - window.innerWidth,
        chatOverflow: messages.scrollWidth - messages.clientWidth,
      }
    })
    expect(seen).toEqual({ pwned: null, images: 0, firstLeftOfLast: true, pageOverflow: 0, chatOverflow: 0 })
    expect(eve.problems).toEqual([])
  }, 60_000)
  test("a player id with a right-to-left override does not turn the match's results around", async () => {
    const fay = await open('fay')
    const page = fay.page
    await page.getByTestId('match-status').filter({ hasText: 'open, 0/4 seated' }).waitFor({ timeout: 15_000 })
    const match = (await page.getByTestId('match-name').textContent())!
    const player = 'zed\u202e'
    expect((await d.call('POST', '/v1/events', { type: 'match.join', data: { match } }, { token: await d.token(player) })).status).toBe(202)
    await page.getByTestId('match-status').filter({ hasText: 'open, 1/4 seated' }).waitFor({ timeout: 15_000 })
    expect((await d.call('POST', `/demo/matches/${match}/play`)).status).toBe(202)
    await page.getByTestId('match-status').filter({ hasText: 'finished: 1. ' }).waitFor({ timeout: 15_000 })
    const [result] = ((await d.call('GET', `/v1/matches/${match}`)).json as { results: { player: string; score: number }[] }).results
    expect(result.player).toBe(player)
    // The space before the score must sit left of it, as it would without the player's override.
    const scoreReadsForward = await readsForward(page.getByTestId('match-status'), ` ${result.score}`, { from: 0, last: true })
    expect(scoreReadsForward).toBe(true)
    expect(fay.problems).toEqual([])
  }, 60_000)
})
