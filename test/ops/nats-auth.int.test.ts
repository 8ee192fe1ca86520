import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import type { TestEnv } from '../../core/testing/env'
import { runUntilExit, until, type Proc } from '../e2e/harness'
import { configureBoard, configuredVersion, nodeVars, postEvents, privateNatsDeployment, readModel, scoreEvent, startNodes, stopCleanly, type PrivateNatsDeployment } from '../cluster/support'
import type { PrivateNats } from '../cluster/private-nats'

/**
 * A NATS server that requires a login, given in NATS_URL as operators write it for other NATS
 * clients (`nats://user:password@host:4222`): Fanfare logs in with it. A wrong login stops a node
 * at once with a message naming NATS_URL (never the password).
 */
let d: PrivateNatsDeployment | undefined
let env: TestEnv
let nats: PrivateNats
const procs: Proc[] = []
const withLogin = (url: string, login: string) => url.replace('nats://', `nats://${login}@`)

beforeAll(async () => {
  d = await privateNatsDeployment('nats-auth', { FANFARE_PARTITIONS: '2' }, { users: [{ user: 'fanfare', password: 'pa$$ word' }] })
  ;({ env, nats } = d)
})
afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop('SIGKILL')))
  await d?.close()
})

describe('a NATS server that requires a login', () => {
  test('credentials in NATS_URL: both kinds of node start and an event is applied', async () => {
    const node = nodeVars(env.vars, { NATS_URL: withLogin(nats.url, `fanfare:${encodeURIComponent('pa$$ word')}`) })
    const { api } = node
    await startNodes(node, procs)
    await configureBoard(api, 'auth', 'sum')
    expect((await postEvents(api, [scoreEvent('auth-1', 'auth', 'p1', 5)])).status).toBe(202)
    const rm = readModel(env.vars.DATABASE_URL)
    try {
      await until('the event applied', async () => (await rm.version('leaderboard:auth')) === configuredVersion(1), 15_000)
    } finally {
      await rm.close()
    }
    await stopCleanly(...procs.splice(0))
  }, 60_000)

  for (const [name, entry] of [
    ['API node', 'api/src/main.ts'],
    ['stream workers', 'stream-workers/src/main.ts'],
  ] as const) {
    test(`${name} with a wrong password: exits at once naming NATS_URL, without the password`, async () => {
      const { code, output } = await runUntilExit(entry, { ...env.vars, NATS_URL: withLogin(nats.url, 'fanfare:wrong-secret') })
      expect(code).not.toBe(0)
      expect(code).not.toBe(137)
      expect(output).toContain('NATS refused the login')
      expect(output).toContain('NATS_URL')
      expect(output).not.toContain('wrong-secret')
    }, 30_000)
  }
})
