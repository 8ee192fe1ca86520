import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { createJwtVerifier } from '../../auth/jwt'
import { createHarness, type ApiHarness } from '../../test-support'

describe('the demo page and its sign-in', () => {
  let on: ApiHarness
  let off: ApiHarness
  beforeAll(async () => {
    on = await createHarness({ FANFARE_DEMO: 'on' })
    off = await createHarness()
  })
  afterAll(async () => {
    await on?.close()
    await off?.close()
  })

  test('FANFARE_DEMO=on: the page, its stylesheet and its script (the SDK, bundled) come from the node', async () => {
    const page = await on.call('GET', '/demo')
    expect(page.status).toBe(200)
    expect(String(page.json)).toContain('<script type="module" src="/demo/app.js">')
    const script = await on.call('GET', '/demo/app.js')
    expect(script.status).toBe(200)
    // The SDK is in the bundle, and nothing is imported from elsewhere.
    expect(String(script.json)).toContain('token_expiring')
    expect(String(script.json)).not.toMatch(/\bimport\s*[{*"']/)
    expect((await on.call('GET', '/demo/style.css')).status).toBe(200)
  })

  test('sign-in mints a user token for the name; a bad name is 422 and mints nothing', async () => {
    const r = await on.call('POST', '/demo/session', { body: { name: 'Ann_1' } })
    expect(r.status).toBe(200)
    const { token, user, name } = r.json as { token: string; user: string; name: string }
    expect([user, name]).toEqual(['demo-ann_1', 'Ann_1'])
    expect(await createJwtVerifier(on.env.config)!(token)).toMatchObject({ kind: 'user', id: 'demo-ann_1', name: 'Ann_1' })
    for (const bad of [{ name: '' }, { name: 'a b' }, { name: 'x'.repeat(25) }, {}, { name: 'ann', roles: ['admin'] }]) {
      const refused = await on.call('POST', '/demo/session', { body: bad })
      expect([JSON.stringify(bad), refused.status]).toEqual([JSON.stringify(bad), 422])
    }
  })

  test('the demo game server opens arcade matches (a new id each time) and plays only matches it knows', async () => {
    const a = await on.call('POST', '/demo/matches')
    const b = await on.call('POST', '/demo/matches')
    expect([a.status, b.status]).toEqual([202, 202])
    const ids = [(a.json as { match: string }).match, (b.json as { match: string }).match]
    for (const id of ids) expect(id).toMatch(/^arcade-[a-z0-9]+-[a-z0-9]+$/)
    // The harness has no workers: nothing is projected, so no match is known yet.
    const play = await on.call('POST', `/demo/matches/${ids[0]}/play`)
    expect([play.status, (play.json as { error: { code: string } }).error.code]).toEqual([404, 'not_found'])
    expect((await on.call('POST', '/demo/matches/not a match/play')).status).toBe(422)
  })

  test('off by default (outside npm start): no page, no sign-in, no demo game server', async () => {
    for (const [method, path] of [['GET', '/demo'], ['GET', '/demo/app.js'], ['POST', '/demo/session'], ['POST', '/demo/matches'], ['POST', '/demo/matches/x/play']] as const) {
      expect((await off.call(method, path, method === 'POST' ? { body: { name: 'ann' } } : {})).status).toBe(404)
    }
  })
})
