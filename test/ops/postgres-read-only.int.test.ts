import { afterAll, describe, expect, test } from 'bun:test'
import { setDatabaseDefault } from '../../core/testing/database'
import { type Proc } from '../e2e/harness'
import { privatePostgresUnavailable } from '../cluster/private-postgres'
import { expectAppliedOnce, privatePostgresDeployment, readModel, startNodes, stopCleanly, sumBoardPoster, sumsOf, untilBoardEquals, type PrivatePostgresDeployment } from '../cluster/support'
import { until } from '../../core/testing/wait'

const unavailable = privatePostgresUnavailable()
if (unavailable) console.warn(`postgres read-only test skipped: ${unavailable}`)

/**
 * DATABASE_URL turning read-only under a running worker (a failover pointing it at a standby for a
 * while, or default_transaction_read_only set for maintenance): Postgres refuses every write with
 * 25006. The worker must apply and acknowledge nothing meanwhile, and stay up retrying: it exited
 * ("an error retrying cannot fix"), and a container restarting it with a growing backoff can keep
 * the projections stopped for minutes after the database is writable again. Once writable, every
 * acknowledged event is applied exactly once, by the same process. An API write meanwhile is 503
 * `database_unavailable`, saying why.
 */
describe.skipIf(Boolean(unavailable))('Postgres read-only under a worker', () => {
  let d: PrivatePostgresDeployment | undefined
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await d?.close()
  })

  test('the worker waits out read-only mode and then applies every event once', async () => {
    d = await privatePostgresDeployment({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '2000' })
    const { databaseUrl, api } = d
    /** Sets the database's default for new sessions, and ends the sessions open (the nodes reconnect). */
    const readOnly = (on: boolean) => setDatabaseDefault(databaseUrl, 'default_transaction_read_only', on ? 'on' : 'off')

    const { workerProc: worker } = await startNodes(d, procs)
    const board = 'ro'
    const { acked, post } = await sumBoardPoster(api, board, 4)
    const rm = readModel(databaseUrl)
    try {
      for (let i = 0; i < 3; i++) await post()
      await untilBoardEquals(rm, board, sumsOf(acked), 15_000)
      const before = await rm.version(`leaderboard:${board}`)

      await readOnly(true)
      for (let i = 0; i < 3; i++) await post()
      // An API write meanwhile is told the database is unavailable (retry), not a bare 500
      // `internal`; reads go on.
      // (Retried while the answer is the generic one: the sessions readOnly ended may still be in
      // the pool, and a write on one of those is told "unavailable" for the lost connection.)
      let put!: Response
      let body: any
      await until('a write told the database is read-only', async () => {
        put = await fetch(`${api.baseUrl}/admin/leaderboards/ro2`, {
          method: 'PUT',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${api.adminToken}` },
          body: JSON.stringify({ operator: 'sum' }),
        })
        body = await put.json()
        return put.status !== 503 || String(body.error?.message).includes('read-only') || undefined
      }, 10_000, 200)
      expect(put.status).toBe(503)
      expect(put.headers.get('retry-after')).toBe('1')
      expect(body.error.code).toBe('database_unavailable')
      expect(body.error.message).toContain('read-only')
      expect((await fetch(`${api.baseUrl}/v1/leaderboards/${board}`)).status).toBe(200)
      await Bun.sleep(5000)
      expect(worker.proc.exitCode).toBeNull()
      expect(await rm.version(`leaderboard:${board}`)).toBe(before) // nothing applied, so nothing acknowledged

      await readOnly(false)
      await expectAppliedOnce(rm, board, acked, 30_000, worker)
    } finally {
      await rm.close()
    }
    await stopCleanly(...procs)
  }, 90_000)
})
