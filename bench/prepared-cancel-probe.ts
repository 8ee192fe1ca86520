/**
 * Probe (not part of `bench/run.ts`): does Bun's SQL client lose track of its prepared statements
 * when Postgres cancels and ends statements under it? A database of its own with statement_timeout
 * 1 ms, four concurrent transactions on a pool of two connections, and their backends terminated
 * every 30-70 ms, until a query fails `42P05 prepared statement "..." already exists` (or
 * `--seconds` pass). Then the terminations stop, and the same queries run again on the same pool.
 * Printed: whether 42P05 was seen, whether core/db/errors.ts calls it transient (the worker retries
 * it), and what the queries after it answered (Bun 1.4.5: all succeed but a few timeouts).
 *
 *   node_modules/.bin/bun bench/prepared-cancel-probe.ts [--url=postgres://postgres@127.0.0.1:5432/postgres] [--seconds=60]
 */
import { SQL } from 'bun'
import { isTransientDbError, sqlStateOf } from '../core/db/errors'

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=').slice(1).join('=')
const url = new URL(arg('url') ?? 'postgres://postgres@127.0.0.1:5432/postgres')
const seconds = Number(arg('seconds') ?? 60)
const name = `prepared_cancel_probe_${process.pid}`
const admin = new SQL({ url: url.href, max: 1, prepare: false })
await admin.unsafe(`create database ${name}`)
await admin.unsafe(`alter database ${name} set statement_timeout = 1`)
const sql = new SQL({ url: Object.assign(new URL(url), { pathname: `/${name}` }).href, max: 2 })
try {
  let terminating = true
  const terminator = (async () => {
    while (terminating) {
      await Bun.sleep(30 + Math.random() * 40)
      if (terminating) await admin.unsafe(`select pg_terminate_backend(pid) from pg_stat_activity where datname = '${name}' and pid <> pg_backend_pid()`)
    }
  })()
  // Query texts long enough to take a while to parse and plan, so cancels land at every step.
  const text = (n: number) => `select ${Array.from({ length: 100 }, (_, k) => `case when $1::int > ${k + n} then ${k} else 0 end`).join(' + ')} as a, (select count(*) from generate_series(1, $2::int)) as c`
  const round = (i: number) =>
    Promise.all(Array.from({ length: 4 }, (_, j) => sql.begin((tx) => tx.unsafe(text(i % 20), [i, 500 + ((i + j) * 37) % 1500])).then(() => undefined, (err: unknown) => err)))
  let duplicate: unknown
  const deadline = Date.now() + seconds * 1000
  let i = 0
  for (; !duplicate && Date.now() < deadline; i++) duplicate = (await round(i)).find((err) => sqlStateOf(err) === '42P05')
  terminating = false
  await terminator
  const after: Record<string, number> = {}
  for (let k = 0; k < 20; k++) for (const err of await round(i + k)) {
    const answer = err === undefined ? 'ok' : `${sqlStateOf(err)} ${(err as Error).message.slice(0, 50)}`
    after[answer] = (after[answer] ?? 0) + 1
  }
  console.log(duplicate ? `42P05 seen after ${i} rounds: ${(duplicate as Error).message}` : `42P05 not seen in ${seconds} s (${i} rounds)`)
  if (duplicate) console.log(`isTransientDbError: ${isTransientDbError(duplicate)}`)
  console.log('the same queries after the terminations stopped:', after)
} finally {
  await sql.close()
  await admin.unsafe(`drop database ${name} with (force)`)
  await admin.close()
}
