/**
 * `npm run token -- --user alice [--ttl 1h] [--role moderator] [--name Alice] [--channel 'chat:vip-*']`
 *
 * Mints a user token (HS256) with the FANFARE_JWT_SECRET of the environment, the way a game's own
 * auth service would, for trying Fanfare out and for tests by hand. Prints only the token on stdout
 * (`npm run -s token -- ...` keeps npm's own lines out of it), and what it holds on stderr.
 */
import { parseArgs } from 'node:util'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { UserClaims } from '../api/src/auth/jwt'
import { mintUserToken } from '../api/src/auth/mint'
import { ConfigError, loadConfig } from '../core/config'

export const USAGE = "usage: npm run token -- --user <id> [--ttl 1h] [--role <role>]... [--name <display name>] [--channel '<pattern>']..."

/** A mistake of the caller's: printed with the usage, exit code 2. */
export class UsageError extends Error {}

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 }
/** Longest lifetime accepted: a token lives until it expires unless revoked; keep them short. */
const MAX_TTL_SECONDS = 30 * 86400

/** `90`, `90s`, `15m`, `1h`, `7d` to seconds (1 s to 30 days). */
export function parseTtl(text: string): number {
  const m = /^(\d+)([smhd]?)$/.exec(text.trim())
  const seconds = m ? Number(m[1]) * UNITS[m[2] || 's'] : NaN
  if (!(seconds >= 1 && seconds <= MAX_TTL_SECONDS)) throw new UsageError(`--ttl ${text}: expected a duration like 90s, 15m, 1h or 7d (at most 30d)`)
  return seconds
}

export type TokenRequest = { sub: string; ttlSeconds: number; name?: string; roles: string[]; channels: string[] }

/** The command line as a token request; UsageError for anything wrong. */
export function parseTokenArgs(argv: string[]): TokenRequest {
  let values
  try {
    ;({ values } = parseArgs({
      args: argv,
      options: {
        user: { type: 'string' },
        ttl: { type: 'string', default: '1h' },
        role: { type: 'string', multiple: true, default: [] },
        name: { type: 'string' },
        channel: { type: 'string', multiple: true, default: [] },
      },
      strict: true,
      allowPositionals: false,
    }))
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  if (!values.user) throw new UsageError('--user <id> is required')
  return { sub: values.user, ttlSeconds: parseTtl(values.ttl), name: values.name, roles: values.role, channels: values.channel }
}

const claimsCheck = TypeCompiler.Compile(UserClaims)

/**
 * Mints the token a command line asks for, from the environment's FANFARE_JWT_SECRET (and its
 * FANFARE_JWT_ISSUER / FANFARE_JWT_AUDIENCE, which the API checks). The claims are checked against
 * the schema the API verifies with, so a token it would refuse is never printed.
 */
export async function tokenFromCommandLine(argv: string[], env: Record<string, string | undefined>): Promise<{ token: string; request: TokenRequest; expiresAt: Date }> {
  const request = parseTokenArgs(argv)
  let config
  try {
    config = loadConfig(env)
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(err.message)
    throw err
  }
  if (!config.FANFARE_JWT_SECRET) {
    throw new UsageError(
      config.FANFARE_JWKS_URL
        ? 'FANFARE_JWT_SECRET is not set: this deployment verifies tokens with FANFARE_JWKS_URL, so they are minted by your own auth service'
        : 'FANFARE_JWT_SECRET is not set: set it to the secret the API verifies user tokens with (npm start prints the one it generated)',
    )
  }
  const iat = Math.floor(Date.now() / 1000)
  const claims = {
    sub: request.sub,
    exp: iat + request.ttlSeconds,
    iat,
    ...(request.name !== undefined ? { name: request.name } : {}),
    ...(request.roles.length ? { roles: request.roles } : {}),
    ...(request.channels.length ? { channels: request.channels } : {}),
  }
  if (!claimsCheck.Check(claims)) {
    const first = claimsCheck.Errors(claims).First()
    const field = first?.path.split('/')[1] ?? ''
    const flag = ({ sub: '--user', name: '--name', roles: '--role', channels: '--channel' } as Record<string, string>)[field] ?? field
    // A pattern's description says what is allowed; TypeBox's message would quote the regex.
    throw new UsageError(`${flag}: ${(first?.schema.description as string | undefined) ?? first?.message ?? 'invalid'}`)
  }
  const token = await mintUserToken(config.FANFARE_JWT_SECRET, {
    sub: request.sub,
    ttlSeconds: request.ttlSeconds,
    issuedAt: iat,
    name: request.name,
    roles: request.roles.length ? request.roles : undefined,
    channels: request.channels.length ? request.channels : undefined,
    issuer: config.FANFARE_JWT_ISSUER,
    audience: config.FANFARE_JWT_AUDIENCE,
  })
  return { token, request, expiresAt: new Date(claims.exp * 1000) }
}

if (import.meta.main) {
  try {
    const { token, request, expiresAt } = await tokenFromCommandLine(process.argv.slice(2), process.env)
    process.stdout.write(`${token}\n`)
    const extras = [
      request.name !== undefined ? `name ${JSON.stringify(request.name)}` : '',
      request.roles.length ? `roles ${request.roles.join(', ')}` : '',
      request.channels.length ? `channels ${request.channels.join(', ')}` : '',
    ].filter(Boolean)
    process.stderr.write(`user ${JSON.stringify(request.sub)}${extras.length ? `, ${extras.join('; ')}` : ''}; expires ${expiresAt.toISOString()}\n`)
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    process.stderr.write(`fanfare token: ${err.message}\n${USAGE}\n`)
    process.exit(2)
  }
}
