import { afterAll, describe, expect, test } from 'bun:test'
import { setDatabaseDefault } from '../../core/testing/database'
import { until, type Proc } from '../e2e/harness'
import { privatePostgresUnavailable } from '../cluster/private-postgres'
import { expectAppliedOnce, privatePostgresDeployment, readModel, startNodes, stopCleanly, sumBoardPoster, type PrivatePostgresDeployment } from '../cluster/support'

const unavailable = privatePostgresUnavailable()
if (unavailable) console.warn(`postgres statement timeout test skipped: ${unavailable}`)

/**
 * A statement_timeout far too low for the database's work (an operator's mistake): Postgres
 * cancels queries (57014). The API node used to die: postgres.js runs a catalog query of its own on
 * every new connection and, when that is canceled, rejects a promise nobody awaits
 * (porsager/postgres#1192), which ends the process. It must stay up, answer 503
 * `database_unavailable` naming the cause, and serve again once the setting is fixed; the worker
 * applies nothing meanwhile and then every acknowledged event once.
 */
describe.skipIf(Boolean(unavailable))('Postgres statement_timeout too low', () => {
  let d: PrivatePostgresDeployment | undefined
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await d?.close()
  })

  test('the API stays up and answers 503; everything applies once the timeout is fixed', async () => {
    d = await privatePostgresDeployment({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '2000' })
    const { databaseUrl, api } = d
    /** Sets the database's statement_timeout for new sessions, and ends the open ones (the nodes reconnect). */
    const statementTimeout = (value: string) => setDatabaseDefault(databaseUrl, 'statement_timeout', value === 'default' ? undefined : value)

    const { apiProc } = await startNodes(d, procs)
    const board = 'st'
    const { acked, post } = await sumBoardPoster(api, board, 3)
    for (let i = 0; i < 3; i++) await post()

    await statementTimeout('1ms')
    const answers: string[] = []
    const messages: string[] = []
    for (let i = 0; i < 10; i++) {
      await post()
      const res = await fetch(`${api.baseUrl}/v1/leaderboards/${board}`).catch((err) => ({ status: 0, json: async () => ({ error: { code: String(err) } }) }))
      const error = res.status === 200 ? undefined : (await res.json()).error
      answers.push(error ? `${res.status} ${error.code}` : '200')
      if (error) messages.push(error.message)
      await Bun.sleep(200)
    }
    expect(apiProc.proc.exitCode).toBeNull()
    // Reads on a connection opened before the change may still be answered; none fails otherwise.
    expect(answers.filter((a) => a !== '200' && a !== '503 database_unavailable')).toEqual([])
    expect(answers).toContain('503 database_unavailable')
    // The first requests may meet connections the test cut (57P01); the later ones the timeout, named.
    expect(messages.some((m) => m.includes('statement_timeout'))).toBe(true)

    await statementTimeout('default')
    await until('reads answered again', async () => (await fetch(`${api.baseUrl}/v1/leaderboards/${board}`)).status === 200, 15_000)
    const rm = readModel(databaseUrl)
    try {
      await expectAppliedOnce(rm, board, acked, 30_000)
    } catch (err) {
      // CI saw the board stop 3-5 short here: the worker had exited on `42P05 prepared statement
      // "P0" already exists` (its driver out of step after the cancels; retried now, see
      // core/db/errors.ts). Say whether a process exited and what it logged last.
      for (const p of procs) console.error(`${p.name}: exit ${p.proc.exitCode}\n${p.output().slice(-3000)}`)
      throw err
    } finally {
      await rm.close()
    }
    await stopCleanly(...procs)
  }, 90_000)
})
