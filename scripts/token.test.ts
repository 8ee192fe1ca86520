import { describe, expect, test } from 'bun:test'
import { resolve } from 'node:path'
import { createJwtVerifier } from '../api/src/auth/jwt'
import { parseTtl, UsageError } from './token'

const ROOT = resolve(import.meta.dir, '..')
const SECRET = 'token-script-test-secret-0123456789abcdef'

/** Runs `npm run -s token -- <args>` (the documented command) in a clean environment. */
function runToken(args: string[], env: Record<string, string> = {}, via: 'npm' | 'bun' = 'bun') {
  const cmd = via === 'npm' ? ['npm', 'run', '-s', 'token', '--', ...args] : [process.execPath, 'scripts/token.ts', ...args]
  // npm puts node_modules/.bin on PATH itself; bun is found there.
  const r = Bun.spawnSync(cmd, { cwd: ROOT, env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env } })
  return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() }
}

describe('npm run token', () => {
  test('prints a token that verifies with the configured secret and carries the given claims', async () => {
    const r = runToken(['--user', 'alice', '--ttl', '2h', '--role', 'moderator', '--name', 'Alice', '--channel', 'chat:vip-*', '--channel', 'chat:staff'], { FANFARE_JWT_SECRET: SECRET }, 'npm')
    expect([r.code, r.stderr]).toEqual([0, expect.stringContaining('user "alice"')])
    const token = r.stdout.trim()
    expect(token.split('.')).toHaveLength(3)
    const p = await createJwtVerifier({ FANFARE_JWT_SECRET: SECRET })!(token)
    expect(p).toMatchObject({ kind: 'user', id: 'alice', name: 'Alice', roles: ['moderator'], channels: ['chat:vip-*', 'chat:staff'] })
    expect(Math.abs(p.expiresAt - (Date.now() + 2 * 3600_000))).toBeLessThan(10_000)
    expect(p.expiresAt - p.issuedAt!).toBe(2 * 3600_000)
    // Another secret does not verify it.
    expect(() => createJwtVerifier({ FANFARE_JWT_SECRET: SECRET.replace('t', 'T') })!(token)).toThrow(/signature/)
  })

  test('the defaults (1 h, no roles) and the configured issuer and audience, which the API checks', async () => {
    const env = { FANFARE_JWT_SECRET: SECRET, FANFARE_JWT_ISSUER: 'https://auth.example', FANFARE_JWT_AUDIENCE: 'fanfare' }
    const r = runToken(['--user', 'bob'], env)
    expect(r.code).toBe(0)
    const p = await createJwtVerifier(env)!(r.stdout.trim())
    expect(p).toMatchObject({ id: 'bob', roles: [], channels: [] })
    expect(p.expiresAt - p.issuedAt!).toBe(3600_000)
  })

  test('during a rotation it mints with FANFARE_JWT_SECRET (the new secret), not FANFARE_JWT_PREVIOUS_SECRET', async () => {
    const previous = 'token-script-previous-secret-0123456789'
    const r = runToken(['--user', 'carol'], { FANFARE_JWT_SECRET: SECRET, FANFARE_JWT_PREVIOUS_SECRET: previous })
    expect(r.code).toBe(0)
    const token = r.stdout.trim()
    // Verified by a node that has only the new secret (after the rotation), not by one with only the old.
    expect(await createJwtVerifier({ FANFARE_JWT_SECRET: SECRET })!(token)).toMatchObject({ id: 'carol' })
    expect(() => createJwtVerifier({ FANFARE_JWT_SECRET: previous })!(token)).toThrow(/signature/)
  })

  test('no secret, a bad flag or a claim the API would refuse: exit 2 with a message, nothing on stdout', () => {
    const cases: [string[], Record<string, string>, RegExp][] = [
      [['--user', 'alice'], {}, /FANFARE_JWT_SECRET is not set/],
      [['--user', 'alice'], { FANFARE_JWKS_URL: 'https://auth.example/jwks.json' }, /FANFARE_JWKS_URL/],
      [[], { FANFARE_JWT_SECRET: SECRET }, /--user <id> is required/],
      [['--user', 'alice', '--ttl', 'forever'], { FANFARE_JWT_SECRET: SECRET }, /--ttl forever/],
      [['--user', 'two words'], { FANFARE_JWT_SECRET: SECRET }, /--user: .*no spaces/],
      [['--user', 'alice', '--admin'], { FANFARE_JWT_SECRET: SECRET }, /--admin/],
      [['--user', 'alice'], { FANFARE_JWT_SECRET: 'too short' }, /FANFARE_JWT_SECRET/],
    ]
    for (const [args, env, message] of cases) {
      const r = runToken(args, env)
      expect([args, r.code, r.stdout]).toEqual([args, 2, ''])
      expect(r.stderr).toMatch(message)
      expect(r.stderr).toContain('usage: npm run token')
    }
  })

  test('--ttl takes seconds, minutes, hours and days, up to 30 days', () => {
    expect(['90', '90s', '15m', '1h', '7d', '30d'].map(parseTtl)).toEqual([90, 90, 900, 3600, 604800, 2592000])
    for (const bad of ['0', '31d', '1y', '-5m', '1.5h', '']) expect(() => parseTtl(bad)).toThrow(UsageError)
  })
})
