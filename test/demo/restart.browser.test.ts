import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { type Browser } from 'playwright-core'
import { spawnProc, waitReady } from '../e2e/harness'
import { launchChromium } from '../browser'
import { startDeployment, type Deployment } from '../sdk/deployment'


/**
 * The arcade demo across a restart of its only API node: the pages reconnect by themselves (their
 * token function signs in again against the new process), and chat, reactions, scores and the
 * viewer count flow again, with nothing published twice.
 */
describe('the arcade demo in Chromium: its node restarts', () => {
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

  test('SIGTERM, then SIGKILL, and each time a new process on the same port: both pages are connected again and see each other', async () => {
    const open = async (name: string) => {
      const page = await browser.newPage({ viewport: { width: 1280, height: 760 } })
      const problems: string[] = []
      page.on('pageerror', (err) => void problems.push(String(err)))
      await page.goto(`${d.urls[0]}/demo#name=${name}`)
      await page.getByTestId('status').filter({ hasText: /^connected$/ }).waitFor({ timeout: 15_000 })
      return { page, problems }
    }
    const ann = await open('ann')
    const bob = await open('bob')
    for (const { page } of [ann, bob]) await page.getByTestId('viewers').filter({ hasText: '2 watching' }).waitFor({ timeout: 15_000 })

    const port = new URL(d.urls[0]).port
    for (const [round, signal] of (['SIGTERM', 'SIGKILL'] as const).entries()) {
      const api = d.procs.filter((p) => p.name.startsWith('api')).at(-1)!
      await api.stop(signal)
      for (const { page } of [ann, bob]) await page.getByTestId('status').filter({ hasText: 'reconnecting' }).waitFor({ timeout: 10_000 })
      const next = spawnProc(`api-0-${round}`, 'api/src/main.ts', { ...d.env.vars, PORT: port })
      d.procs.push(next)
      await waitReady(d.urls[0], [next])
      const upAt = Date.now()
      for (const { page } of [ann, bob]) await page.getByTestId('status').filter({ hasText: /^connected$/ }).waitFor({ timeout: 30_000 })
      const back = Date.now() - upAt

      const text = `after ${signal}`
      await ann.page.getByTestId('chat-input').fill(text)
      await ann.page.getByTestId('chat-send').click()
      await ann.page.locator('[data-emoji="🔥"]').click()
      await bob.page.getByTestId('messages').getByText(text).waitFor({ timeout: 15_000 })
      await bob.page.getByTestId('totals').filter({ hasText: `🔥 ${round + 1}` }).waitFor({ timeout: 15_000 })
      expect((await d.call('POST', '/v1/events', { type: 'score.submitted', data: { board: 'arena', player: 'zed', score: 42 + round } })).status).toBe(202)
      for (const { page } of [ann, bob]) {
        await page.locator('[data-testid="board"] li[data-player="zed"]').filter({ hasText: `${42 + round}` }).waitFor({ timeout: 15_000 })
        // A node killed takes its viewers with it once its presence expires; the pages count again.
        await page.getByTestId('viewers').filter({ hasText: '2 watching' }).waitFor({ timeout: 20_000 })
      }
      const messages = (await d.call('GET', '/v1/rooms/lobby/messages?limit=50')).json.messages.filter((m: { text: string }) => m.text === text)
      expect(messages.length).toBe(1)
      console.log(`demo: both pages connected ${back} ms after the new node was ready (${signal})`)
    }
    expect([...ann.problems, ...bob.problems]).toEqual([])
  }, 90_000)
})
